"""WSGI entry point: ``gunicorn wsgi:app`` (settings from EDGEAI_* variables)."""
from edgeai import create_app

app = create_app()
