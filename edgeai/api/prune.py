"""The submit calls, one per engine (``POST /api/tf_prune``, ``POST /api/pt_prune``).

Each is built from its engine's declaration (:class:`edgeai.pruning.spec.EngineSpec`):
the route, the Swagger parameters (type, range, default, aliases), the form files
and the validation all come from there, so adding a parameter is one line in an
engine. A handler validates and submits to the queue, nothing more.
"""
from __future__ import annotations

import logging
import shutil
from typing import Any

from flask import request
from flask_restx import Namespace, Resource, fields
from werkzeug.datastructures import FileStorage

from edgeai import queue
from edgeai.api import context
from edgeai.api.params import client_file_name, inspect_uploads, read_files, read_params
from edgeai.errors import SUBMIT, InsufficientStorage, error_body
from edgeai.pruning import specs
from edgeai.pruning.spec import EngineSpec, FileRole, Param

log = logging.getLogger(__name__)
ns = Namespace("prune", description="Submit a model for L1-norm filter pruning")

submitted = ns.model("Submitted", {
    "txid": fields.String(description="Transaction id: pass it to status and download",
                          example="cf06e766-2d20-11ec-931e-0242ac170002"),
    "message": fields.String(description="What happened",
                             example="Successfully submitted transaction."),
})


class NullableString(fields.String):
    """A string field documented as nullable (Swagger 2.0 ``x-nullable``)."""

    def schema(self) -> dict[str, Any]:
        return {**super().schema(), "x-nullable": True}


refused = ns.model("Refused", {
    "txid": NullableString(description="Always null when the upload is refused"),
    "message": fields.String(description="Why the upload was refused and what is allowed"),
})


class Documented:
    """A request-parser type that only carries a parameter's Swagger schema (the values
    are read and checked by :func:`edgeai.api.params.read_params`)."""

    def __init__(self, schema: dict[str, Any]):
        self.__schema__ = dict(schema)

    def __call__(self, value: str) -> str:
        return value


def _document(parser: Any, param: Param) -> None:
    default = param.default if param.default not in (None, [], ()) else None
    help_text = param.help + (f" (default: {default})" if default is not None else "")
    parser.add_argument(param.name, type=Documented(param.schema), location="args",
                        required=param.required, default=default, help=help_text)
    for alias in param.aliases:
        parser.add_argument(alias, type=Documented(param.schema), location="args",
                            help=f"Another spelling of {param.name}, same meaning.")


def parser_for(params: tuple[Param, ...], roles: tuple[FileRole, ...]) -> Any:
    """The Swagger description of a call: every parameter, alias and file."""
    parser = ns.parser()
    for param in params:
        _document(parser, param)
    for role in roles:
        parser.add_argument(role.name, type=FileStorage, location="files",
                            required=role.required,
                            help=f"{role.help} ({', '.join(role.extensions)})")
    return parser


def below_reserve(incoming_bytes: int) -> tuple[dict[str, Any], int, dict[str, str]] | None:
    """The 507 refusal when the data dir's file system would keep less than
    ``EDGEAI_MIN_FREE_DISK_MB`` free after ``incoming_bytes`` more; None when there is
    room. A full disk fails every job, the database and every later upload, so an
    upload is refused before it is stored (with its Content-Length) and again once it is
    received. Answered, not raised: Flask-RESTX logs every raised 5xx as a crash, and a
    full disk is the operator's news, logged here in one line."""
    settings = context.settings()
    reserve = settings.min_free_disk_mb * 1024 * 1024
    if reserve <= 0:
        return None
    free = shutil.disk_usage(settings.data_dir).free
    if free - incoming_bytes >= reserve:
        return None
    mb = 1024 * 1024
    needs = f"this upload needs {-(-incoming_bytes // mb)} MB, " if incoming_bytes else ""
    error = InsufficientStorage(
        f"The server is short of disk space: {free // mb} MB free, {needs}and it keeps "
        f"{settings.min_free_disk_mb} MB in reserve (EDGEAI_MIN_FREE_DISK_MB). Nothing "
        "was stored. Retry later; if this lasts, tell the server's operator.",
        headers={"Retry-After": "60"})
    log.warning("upload refused: %d MB free in %s, below EDGEAI_MIN_FREE_DISK_MB=%d",
                free // mb, settings.data_dir, settings.min_free_disk_mb)
    return error_body(error, SUBMIT), error.code, error.headers


def submit_responses(method: Any) -> Any:
    """The responses a submit call documents (and the X-Fields-aware marshalling)."""
    for code, why in ((507, "The server's disk is below its reserve (EDGEAI_MIN_FREE_DISK_MB)"),
                      (429, "Too many jobs queued or running for this client"),
                      (413, "Upload too large"), (401, "Missing or invalid API key"),
                      (400, "Bad parameter, unknown parameter or bad file")):
        method = ns.response(code, why, refused)(method)
    return ns.marshal_with(submitted, description="Submitted")(method)


def submit_resource(spec: EngineSpec, analyze: bool = False) -> type[Resource]:
    """A resource class for ``spec``'s prune call (or its analysis call), registered on
    :data:`ns`."""
    params = spec.analyze_params() if analyze else spec.params
    roles = spec.analyze_files() if analyze else spec.files
    check = spec.checker(analyze)
    endpoint = spec.analyze_endpoint if analyze else spec.endpoint

    def post(self: Resource) -> Any:
        owner = context.current_client()
        if refused := below_reserve(request.content_length or 0):  # before it is received
            return refused
        uploads = read_files(roles, request.files, request.form)
        if refused := below_reserve(0):  # received: the length was short, or not sent
            return refused
        values = read_params(params, request.args, set(uploads), check)
        inspect_uploads(spec.inspect, values, uploads)
        if analyze:
            values["task"] = "analyze"
        txid = queue.submit(context.database(), context.storage(), context.settings(), owner,
                            spec.name, values, {role: u.stream for role, u in uploads.items()},
                            {role: client_file_name(u) for role, u in uploads.items()})
        context.wake_runner()
        return {"txid": txid, "message": "Successfully submitted transaction."}

    post.__doc__ = (f"Analyse a {spec.name} model on your data: each channel group's "
                    "sensitivity, and a per-group plan for a cost target."
                    if analyze else spec.summary)
    resource = type(f"Submit_{endpoint}", (Resource,), {
        "__doc__": f"{'Analyse' if analyze else 'Prune'} a {spec.name} model.",
        "error_kind": SUBMIT,
        "post": ns.expect(parser_for(params, roles))(submit_responses(post)),
    })
    return ns.route(endpoint)(resource)


SUBMIT_RESOURCES = [submit_resource(spec, analyze) for spec in specs()
                    for analyze in (False, True) if not analyze or spec.analyze_endpoint]
