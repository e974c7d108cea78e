"""The submit calls, one per engine (``POST /api/tf_prune``, ``POST /api/pt_prune``).

Each is built from its engine's declaration (:class:`edgeai.pruning.spec.EngineSpec`):
the route, the Swagger parameters (type, range, default, aliases), the form files
and the validation all come from there, so adding a parameter is one line in an
engine. A handler validates and submits to the queue, nothing more.
"""
from __future__ import annotations

from typing import Any

from flask import request
from flask_restx import Namespace, Resource, fields
from werkzeug.datastructures import FileStorage

from edgeai import queue
from edgeai.api import context
from edgeai.api.params import client_file_name, read_files, read_params
from edgeai.errors import SUBMIT
from edgeai.pruning import specs
from edgeai.pruning.spec import EngineSpec, Param

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


def parser_for(spec: EngineSpec) -> Any:
    """The Swagger description of ``spec``'s call: every parameter, alias and file."""
    parser = ns.parser()
    for param in spec.params:
        _document(parser, param)
    for role in spec.files:
        parser.add_argument(role.name, type=FileStorage, location="files",
                            required=role.required,
                            help=f"{role.help} ({', '.join(role.extensions)})")
    return parser


def submit_responses(method: Any) -> Any:
    """The responses a submit call documents (and the X-Fields-aware marshalling)."""
    for code, why in ((429, "Too many jobs queued or running for this client"),
                      (413, "Upload too large"), (401, "Missing or invalid API key"),
                      (400, "Bad parameter, unknown parameter or bad file")):
        method = ns.response(code, why, refused)(method)
    return ns.marshal_with(submitted, description="Submitted")(method)


def submit_resource(spec: EngineSpec) -> type[Resource]:
    """A resource class for ``spec``'s submit call, registered on :data:`ns`."""

    def post(self: Resource) -> dict[str, str]:
        owner = context.current_client()
        params = read_params(spec, request.args)
        uploads = read_files(spec, request.files, request.form)
        txid = queue.submit(context.database(), context.storage(), context.settings(), owner,
                            spec.name, params, {role: u.stream for role, u in uploads.items()},
                            {role: client_file_name(u) for role, u in uploads.items()})
        context.wake_runner()
        return {"txid": txid, "message": "Successfully submitted transaction."}

    post.__doc__ = spec.summary
    resource = type(f"Submit_{spec.endpoint}", (Resource,), {
        "__doc__": f"Prune a {spec.name} model.",
        "error_kind": SUBMIT,
        "post": ns.expect(parser_for(spec))(submit_responses(post)),
    })
    return ns.route(spec.endpoint)(resource)


SUBMIT_RESOURCES = [submit_resource(spec) for spec in specs()]
