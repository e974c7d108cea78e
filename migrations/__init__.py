"""Alembic's migrations, installed as the package ``edgeai.migrations``.

The folder stays at the top of the checkout; setup.cfg's ``package_dir`` maps it
into the package so that a wheel carries it. ``edgeai.db.upgrade_database`` reads
it with :mod:`importlib.resources`.
"""
