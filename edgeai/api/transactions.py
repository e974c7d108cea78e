"""``GET /api/status`` and ``GET /api/download``: a transaction's state and its artifact.

A transaction is visible only to the client that created it: anyone else gets
the same 404 as for a txid that never existed.
"""
from __future__ import annotations

import uuid

from flask import request, send_file
from flask_restx import Namespace, Resource, fields
from sqlalchemy import func, select

from edgeai.api import context
from edgeai.db import Transaction
from edgeai.errors import BadRequest, Conflict, Gone, NotFound, status_error

ns = Namespace("transactions", description="Follow a pruning transaction and download its result")

NOT_FOUND = "No transaction submitted for txid"

layer_row = ns.model("LayerReport", {
    "name": fields.String(description="Layer (Keras) or module (PyTorch) name"),
    "type": fields.String(description="Layer class"),
    "channels_before": fields.Integer(description="Output channels before pruning"),
    "channels_after": fields.Integer(description="Output channels after pruning"),
    "status": fields.String(description="pruned, omitted, output, unsupported or unchanged"),
    "reason": fields.String(description="Why a layer was left whole"),
})
report_model = ns.model("Report", {
    "framework": fields.String(description="tensorflow or pytorch"),
    "percent": fields.Float(description="The requested fraction"),
    "rule": fields.String(description="How many channels a percent removes"),
    "layers": fields.List(fields.Nested(layer_row), description="Per-layer channels"),
    "params_before": fields.Integer(description="Parameters before pruning"),
    "params_after": fields.Integer(description="Parameters after pruning"),
    "macs_before": fields.Integer(description="Multiply-accumulates per sample before"),
    "macs_after": fields.Integer(description="Multiply-accumulates per sample after"),
    "file_size_before": fields.Integer(description="Uploaded model file size, bytes"),
    "file_size_after": fields.Integer(description="Pruned model file size, bytes"),
    "accuracy_before": fields.Float(description="Accuracy on the uploaded dataset, before"),
    "accuracy_after": fields.Float(description="Accuracy on the uploaded dataset, after"),
    "timings": fields.Raw(description="Seconds spent loading, analysing, rewriting, saving"),
    "warnings": fields.List(fields.String, description="Things worth knowing"),
    "artifacts": fields.Raw(description="Downloadable formats and their file names"),
    "sandbox": fields.Raw(description="How the job was confined, its warm-up and job seconds, "
                                      "and its peak memory (MB)"),
})
status_model = ns.model("Status", {
    "status": fields.String(required=True, description='"0" done, "1" queued, "2" running, '
                            '"-1" failed', example="0"),
    "message": fields.String(required=True, description="Model summary when done; otherwise "
                             "what is happening or why it failed"),
    "filename": fields.String(description="Name of the pruned model file (only when done)",
                              example="tmp7d8tkpfs.h5"),
    "txid": fields.String(description="The transaction id"),
    "state": fields.String(description="queued, running, done, failed or expired"),
    "framework": fields.String(description="tensorflow or pytorch"),
    "queue_position": fields.Integer(description="Jobs ahead of this one (when queued)"),
    "attempts": fields.Integer(description="Times a worker started this job"),
    "created_at": fields.Float(description="Submitted, Unix time"),
    "started_at": fields.Float(description="Started, Unix time"),
    "finished_at": fields.Float(description="Finished, Unix time"),
    "report": fields.Nested(report_model, allow_null=True, skip_none=True,
                            description="What pruning did (when done)"),
})
error_model = ns.model("StatusError", {
    "status": fields.String(description="The transaction's status code, or -1"),
    "message": fields.String(description="What went wrong"),
})

txid_parser = ns.parser()
txid_parser.add_argument("txid", type=str, location="args", required=True,
                         help="The txid returned by tf_prune or pt_prune")
download_parser = txid_parser.copy()
download_parser.add_argument("format", type=str, location="args", default="model",
                             help="model (default: the format uploaded; PyTorch: "
                                  "torch.save((model, info))), state_dict or pt2 (PyTorch only)")


def find_transaction(raw_txid: str | None) -> Transaction:
    """Return the caller's transaction ``raw_txid``; raises BadRequest or NotFound."""
    owner = context.current_client()
    if not raw_txid:
        raise status_error(BadRequest, "-1", "txid is required, e.g. ?txid=<the txid that "
                                             "tf_prune or pt_prune returned>.")
    try:
        txid = str(uuid.UUID(raw_txid.strip()))
    except ValueError:
        raise status_error(NotFound, "-1", NOT_FOUND) from None
    with context.database().session() as session:
        row = session.get(Transaction, txid)
        if row is None or row.owner != owner:
            raise status_error(NotFound, "-1", NOT_FOUND)
        session.expunge(row)
        return row


@ns.route("status")
class Status(Resource):
    """The state of one transaction."""

    @ns.expect(txid_parser)
    @ns.response(404, NOT_FOUND, error_model)
    @ns.response(400, "txid missing", error_model)
    @ns.response(401, "Missing or invalid API key", error_model)
    @ns.marshal_with(status_model, skip_none=True)
    def get(self):
        """Get a transaction's status; when done, the pruned model's summary and file name."""
        row = find_transaction(request.args.get("txid"))
        body = {
            "status": row.status, "message": row.message, "txid": row.txid, "state": row.state,
            "framework": row.framework, "attempts": row.attempts, "created_at": row.created_at,
            "started_at": row.started_at, "finished_at": row.finished_at,
        }
        if row.state == "done":
            body["filename"] = row.filename
            body["report"] = row.report
        elif row.state == "queued":
            with context.database().session() as session:
                body["queue_position"] = session.scalar(
                    select(func.count()).select_from(Transaction).where(
                        Transaction.state == "queued", Transaction.created_at < row.created_at))
        return body


@ns.route("download")
class Download(Resource):
    """The pruned model file."""

    @ns.expect(download_parser)
    @ns.produces(["application/octet-stream"])
    @ns.response(200, "The pruned model file (Content-Disposition names it)")
    @ns.response(404, NOT_FOUND, error_model)
    @ns.response(409, "Not done yet, or failed", error_model)
    @ns.response(410, "Expired", error_model)
    @ns.response(400, "txid missing, or format not available", error_model)
    @ns.response(401, "Missing or invalid API key", error_model)
    def get(self):
        """Download a finished transaction's pruned model."""
        row = find_transaction(request.args.get("txid"))
        if row.state == "expired":
            raise status_error(Gone, row.status, row.message)
        if row.state != "done":
            reason = {"queued": "is queued", "running": "is still running",
                      "failed": "failed"}[row.state]
            raise status_error(Conflict, row.status,
                               f"The transaction {reason}; nothing to download. {row.message}"
                               .strip())
        fmt = (request.args.get("format") or "model").strip()
        artifacts = (row.report or {}).get("artifacts") or {"model": row.filename}
        allowed = ["model"] + (["state_dict", "pt2"] if row.framework == "pytorch" else [])
        if fmt not in allowed:
            raise status_error(BadRequest, row.status,
                               f"format={fmt[:40]!r} is not available; allowed: "
                               f"{', '.join(allowed)}.")
        filename = artifacts.get(fmt)
        if not filename:
            why = "; ".join((row.report or {}).get("warnings") or []) or "it could not be made"
            raise status_error(Conflict, row.status,
                               f"No {fmt} file exists for this model: {why}")
        path = context.storage().result_path(row.txid, filename)
        if not path.is_file():
            raise status_error(Gone, "-1", "The pruned model file is gone; submit the model "
                                           "again.")
        return send_file(path, as_attachment=True, download_name=filename,
                         mimetype="application/octet-stream", max_age=0)
