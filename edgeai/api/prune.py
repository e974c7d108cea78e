"""The submit calls: ``POST /api/tf_prune`` and ``POST /api/pt_prune``."""
from __future__ import annotations

import time
import uuid

from flask import request
from flask_restx import Namespace, Resource, fields
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage

from edgeai.api import context
from edgeai.api.params import (
    PT_CLASS_EXTENSIONS,
    PT_DATASET_EXTENSIONS,
    PT_WEIGHTS_EXTENSIONS,
    TF_MODEL_EXTENSIONS,
    check_file,
    client_file_name,
    parse_input_size,
    parse_model_name,
    parse_omitted,
    parse_percent,
)
from edgeai.db import Transaction
from edgeai.errors import TooManyJobs, submit_error

ns = Namespace("prune", description="Submit a model for L1-norm filter pruning")

submitted = ns.model("Submitted", {
    "txid": fields.String(description="Transaction id: pass it to status and download",
                          example="cf06e766-2d20-11ec-931e-0242ac170002"),
    "message": fields.String(description="What happened",
                             example="Successfully submitted transaction."),
})


class NullableString(fields.String):
    """A string field documented as nullable (Swagger 2.0 ``x-nullable``)."""

    def schema(self):  # noqa: ANN201
        return {**super().schema(), "x-nullable": True}


refused = ns.model("Refused", {
    "txid": NullableString(description="Always null when the upload is refused"),
    "message": fields.String(description="Why the upload was refused and what is allowed"),
})


def _common_args(parser):  # noqa: ANN001 - a RequestParser
    parser.add_argument("percent", type=float, location="args", required=True,
                        help="Fraction of channels to remove from every prunable layer, in "
                             "[0, 1): 0.4 removes 40%")
    parser.add_argument("ommitted", type=str, location="args",
                        help="Comma-separated layer names to keep whole, e.g. fc1,fc2 "
                             "(aliases: omitted, unprunable). Model outputs are never pruned.")
    return parser


tf_parser = _common_args(ns.parser())
tf_parser.add_argument("model", type=FileStorage, location="files", required=True,
                       help="The Keras model: .h5, .keras, or .zip of a SavedModel directory "
                            "or of a .keras file")

pt_parser = _common_args(ns.parser())
pt_parser.add_argument("input_size", type=str, location="args", required=True,
                       help="Shape of one input without the batch dimension, e.g. 1,28,28")
pt_parser.add_argument("model_name", type=str, location="args", default="Net",
                       help="The class in class_def to build with no arguments")
pt_parser.add_argument("weights", type=FileStorage, location="files", required=True,
                       help="state_dict saved with torch.save (.pth/.pt) or .safetensors")
pt_parser.add_argument("class_def", type=FileStorage, location="files", required=True,
                       help="Standalone .py file defining the model class (torch only)")
pt_parser.add_argument("dataset", type=FileStorage, location="files",
                       help="Optional sample data: torch.save(DataLoader of a TensorDataset), "
                            "a tensor, an (x, y) tuple, or .npz; used to report accuracy")


def submit_responses(method):  # noqa: ANN001, ANN201
    """The responses both submit calls document (and the X-Fields-aware marshalling)."""
    for code, why in ((429, "Too many jobs queued or running for this client"),
                      (413, "Upload too large"), (401, "Missing or invalid API key"),
                      (400, "Bad parameter or file")):
        method = ns.response(code, why, refused)(method)
    return ns.marshal_with(submitted, description="Submitted")(method)


def _submit(framework: str, params: dict, uploads: dict[str, FileStorage]) -> dict:
    """Store the uploads, then queue the transaction; return the guide's response body."""
    owner = params.pop("_owner")
    settings = context.settings()
    storage = context.storage()
    txid = str(uuid.uuid4())
    try:
        for role, upload in uploads.items():
            storage.store_upload(txid, role, upload.stream)
        with context.database().immediate() as session:
            active = session.scalar(select(func.count()).select_from(Transaction).where(
                Transaction.owner == owner, Transaction.state.in_(("queued", "running"))))
            if active >= settings.max_jobs_per_client:
                raise submit_error(
                    TooManyJobs, f"You already have {active} jobs queued or running; the limit "
                    f"is {settings.max_jobs_per_client} (EDGEAI_MAX_JOBS_PER_CLIENT). Retry when "
                    "one has finished.", headers={"Retry-After": "30"})
            session.add(Transaction(
                txid=txid, owner=owner, framework=framework, params=params,
                input_names={role: client_file_name(u) for role, u in uploads.items()},
                state="queued", message="Queued.", attempts=0, created_at=time.time()))
    except BaseException:
        storage.remove_transaction(txid)
        raise
    context.wake_runner()
    return {"txid": txid, "message": "Successfully submitted transaction."}


@ns.route("tf_prune")
class TensorFlowPrune(Resource):
    """Prune a TensorFlow/Keras model."""

    @ns.expect(tf_parser)
    @submit_responses
    def post(self):
        """Submit a Keras model (h5, keras, or a zipped SavedModel) for pruning."""
        owner = context.current_client()
        percent = parse_percent(request.args.get("percent"))
        omitted = parse_omitted(request.args)
        model = check_file(request.files, "model", TF_MODEL_EXTENSIONS)
        return _submit("tensorflow", {"_owner": owner, "percent": percent,
                                      "omitted": list(omitted)}, {"model": model})


@ns.route("pt_prune")
class PyTorchPrune(Resource):
    """Prune a PyTorch model."""

    @ns.expect(pt_parser)
    @submit_responses
    def post(self):
        """Submit a PyTorch state_dict with its class file for pruning."""
        owner = context.current_client()
        percent = parse_percent(request.args.get("percent"))
        omitted = parse_omitted(request.args)
        input_size = parse_input_size(request.args.get("input_size"))
        model_name = parse_model_name(request.args.get("model_name"))
        uploads = {
            "weights": check_file(request.files, "weights", PT_WEIGHTS_EXTENSIONS),
            "class_def": check_file(request.files, "class_def", PT_CLASS_EXTENSIONS),
        }
        dataset = check_file(request.files, "dataset", PT_DATASET_EXTENSIONS, required=False)
        if dataset is not None:
            uploads["dataset"] = dataset
        return _submit("pytorch", {"_owner": owner, "percent": percent, "omitted": list(omitted),
                                   "input_size": input_size, "model_name": model_name}, uploads)
