"""The REST API: one Flask-RESTX ``Api`` on a blueprint, the guide's routes under ``/api``.

Swagger UI is at ``/docs``, the spec at ``/api/swagger.json`` (also ``/swagger.json``).
Errors of the :class:`edgeai.errors.EdgeAIError` family are mapped to responses
here, in one place, with the JSON body the guide prescribes for the kind of call
that failed (a resource's ``error_kind``: submit calls, or transaction calls).
"""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify, redirect, request
from flask_restx import Api
from werkzeug.exceptions import RequestEntityTooLarge

from edgeai.errors import TRANSACTION, EdgeAIError, PayloadTooLarge, error_body

AUTHORIZATIONS = {
    "client_id": {"type": "apiKey", "in": "header", "name": "X-IBM-Client-Id"},
    "client_secret": {"type": "apiKey", "in": "header", "name": "X-IBM-Client-Secret"},
}

DESCRIPTION = (
    "L1-norm filter pruning (Li et al. 2017) for TensorFlow/Keras and PyTorch models. "
    "Submit a model to `tf_prune` or `pt_prune`, poll `status` with the returned txid, "
    "then `download` the pruned model. Send your key in the X-IBM-Client-Id and "
    "X-IBM-Client-Secret headers (Authorize button)."
)


def _error_kind() -> str:
    """Which guide shape the current call answers errors in (its resource's error_kind)."""
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(getattr(view, "view_class", None), "error_kind", TRANSACTION)


def handle_edgeai_error(error: EdgeAIError):
    """Answer a domain error with its guide-shaped JSON body and status code."""
    return error_body(error, _error_kind()), error.code, error.headers


def handle_too_large(_error):
    """Answer an over-size upload (EDGEAI_MAX_UPLOAD_MB) with the guide's upload error."""
    limit = current_app.extensions["edgeai.settings"].max_upload_mb
    return handle_edgeai_error(PayloadTooLarge(f"The upload is larger than the {limit} MB "
                                               "limit (EDGEAI_MAX_UPLOAD_MB)."))


def make_api() -> tuple[Blueprint, Api]:
    """A new blueprint and ``Api`` (one per app: an ``Api`` binds to one app)."""
    from edgeai.api import prune, transactions

    blueprint = Blueprint("api", __name__)
    api = Api(blueprint, prefix="/api", doc="/docs", title="edgeai pruning API", version="1.0",
              description=DESCRIPTION, authorizations=AUTHORIZATIONS,
              security=[{"client_id": [], "client_secret": []}])
    api.errorhandler(EdgeAIError)(handle_edgeai_error)
    api.errorhandler(RequestEntityTooLarge)(handle_too_large)
    api.add_namespace(prune.ns, path="/")
    api.add_namespace(transactions.ns, path="/")
    return blueprint, api


class StripTrailingSlash:
    """WSGI middleware: ``/api/status/`` is served as ``/api/status`` (the guide uses both)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if len(path) > 1 and path.endswith("/") and path.startswith("/api/"):
            environ["PATH_INFO"] = path.rstrip("/") or "/"
        return self.app(environ, start_response)


def init_app(app: Flask) -> None:
    """Register the namespaces, the blueprint, and the small root routes."""
    blueprint, api = make_api()
    app.register_blueprint(blueprint)
    app.extensions["edgeai.api"] = api
    app.wsgi_app = StripTrailingSlash(app.wsgi_app)

    @app.get("/")
    def index():
        return redirect("/docs")

    @app.get("/swagger.json")
    def swagger_json():
        return jsonify(api.__schema__)

    @app.get("/healthz")
    def healthz():
        """Liveness, which sandbox layers and bounds this process's jobs run under, and
        its zygotes (ready: a job gets a fresh process in milliseconds)."""
        runner = app.extensions.get("edgeai.runner")
        if runner is None:
            return {"ok": True, "sandbox": {"jobs": "not run by this process"}}
        return {"ok": True, "sandbox": runner.sandbox.status,
                "zygotes": runner.sandbox.zygotes()}
