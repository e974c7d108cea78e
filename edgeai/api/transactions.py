"""``GET /api/status``, ``GET /api/download`` and ``POST /api/cancel``: a transaction's
state (with the phase and progress its job reports), its artifact, and stopping it.
Status can wait for the job's end (``wait=S``, :mod:`edgeai.api.waiting`).

A transaction is visible only to the client that created it: anyone else gets
the same 404 as for a txid that never existed.
"""
from __future__ import annotations

import uuid

from flask import current_app, redirect, request, send_file
from flask_restx import Namespace, Resource, fields
from sqlalchemy import func, select

from edgeai import metrics
from edgeai.api import context
from edgeai.api.params import refuse_unknown
from edgeai.api.prune import Documented
from edgeai.api.schema import model_for
from edgeai.api.waiting import MAX_WAIT_SECONDS, WAIT_HELP, parse_wait
from edgeai.db import Transaction
from edgeai.errors import BadRequest, Conflict, Gone, NotFound
from edgeai.pruning import spec_for, specs
from edgeai.pruning.progress import PHASES
from edgeai.pruning.report import JobReport, stored_report
from edgeai.queue import CANCELLED, cancel_job
from edgeai.report_page import report_url

ns = Namespace("transactions", description="Follow a pruning transaction and download its result")

NOT_FOUND = "No transaction submitted for txid"

report_model = model_for(ns, JobReport)
status_model = ns.model("Status", {
    "status": fields.String(required=True, description='"0" done, "1" queued, "2" running, '
                            '"-1" failed', example="0"),
    "message": fields.String(required=True, description="Model summary when done; otherwise "
                             "what is happening or why it failed"),
    "filename": fields.String(description="Name of the pruned model file (only when done)",
                              example="tmp7d8tkpfs.h5"),
    "txid": fields.String(description="The transaction id"),
    "state": fields.String(description="queued, running, done, failed or expired"),
    "phase": fields.String(enum=list(PHASES), description="What the job is doing: queued, "
                           "then its steps, then done; a failed job keeps the phase it "
                           "failed in", example="pruning"),
    "progress": fields.Float(min=0, max=1, description="Fraction of the job done, 0 to 1, "
                             "where known (steps done of those planned; fine-tuning by "
                             "epoch)", example=0.5),
    "framework": fields.String(description="The engine: " + ", ".join(
        spec.name for spec in specs())),
    "queue_position": fields.Integer(description="Jobs ahead of this one (when queued)"),
    "attempts": fields.Integer(description="Times a worker started this job"),
    "created_at": fields.Float(description="Submitted, Unix time"),
    "started_at": fields.Float(description="Started, Unix time"),
    "finished_at": fields.Float(description="Finished, Unix time"),
    "report": fields.Nested(report_model, allow_null=True, skip_none=True,
                            description="What pruning did (when done)"),
    "report_withheld": fields.String(description="Why a done job's report is not shown: "
                                     "the stored report is not a valid one (rare: a report "
                                     "is checked before it is stored)"),
    "report_url": fields.String(description="A web page of this transaction's report (charts, "
                                "checks, downloads) that opens without API headers: the "
                                "signed link opens only this transaction and expires after "
                                "EDGEAI_REPORT_LINK_HOURS (default 168); a new one each call"),
})
error_model = ns.model("StatusError", {
    "status": fields.String(description="The transaction's status code, or -1"),
    "message": fields.String(description="What went wrong"),
})

txid_parser = ns.parser()
txid_parser.add_argument("txid", type=str, location="args", required=True,
                         help="The txid returned by tf_prune or pt_prune")
status_parser = txid_parser.copy()
status_parser.add_argument("wait", type=Documented({"type": "number", "minimum": 0,
                                                    "maximum": MAX_WAIT_SECONDS}),
                           location="args", help=WAIT_HELP)
download_parser = txid_parser.copy()
download_parser.add_argument(
    "format", type=str, location="args", default="model",
    help="The file to download (default model). " + "; ".join(
        f"{spec.endpoint} jobs: {spec.download_help}" for spec in specs()))


def find_transaction(accepted: list[str]) -> Transaction:
    """The caller's transaction named by ``?txid=``; ``accepted`` are the query
    parameters the call takes. Raises BadRequest or NotFound."""
    owner = context.current_client()
    refuse_unknown(request.args.keys(), accepted, "parameter")
    raw_txid = request.args.get("txid")
    if not raw_txid:
        raise BadRequest("txid is required, e.g. ?txid=<the txid that a submit call "
                         "returned>.")
    try:
        txid = str(uuid.UUID(raw_txid.strip()))
    except ValueError:
        raise NotFound(NOT_FOUND) from None
    with context.database().session() as session:
        row = session.get(Transaction, txid)
        if row is None or row.owner != owner:
            raise NotFound(NOT_FOUND)
        session.expunge(row)
        return row


def _why_missing(row: Transaction, fmt: str) -> str:
    """Why a finished job has no file in ``fmt``: its export's failure, or not asked for."""
    report = stored_report(row.report)[0] or {}
    export = (report.get("exports") or {}).get(fmt)
    if export:
        return export.get("detail") or "it could not be made"
    if fmt in ((row.params or {}).get("formats") or ()) or fmt in ("model", "state_dict", "pt2"):
        return "; ".join(report.get("warnings") or []) or "it could not be made"
    return f"the job was not asked for it; submit the model again with formats={fmt}"


@ns.route("status")
class Status(Resource):
    """The state of one transaction."""

    @ns.expect(status_parser)
    @ns.response(404, NOT_FOUND, error_model)
    @ns.response(400, f"txid missing, or wait not a number from 0 to {MAX_WAIT_SECONDS}",
                 error_model)
    @ns.response(401, "Missing or invalid API key", error_model)
    @ns.marshal_with(status_model, skip_none=True)
    def get(self):
        """Get a transaction's status; when done, the pruned model's summary and file name."""
        row = find_transaction(["txid", "wait"])
        wait = parse_wait(request.args.get("wait"), row.status)
        if wait and row.state in ("queued", "running"):
            row = wait_for_end(row, wait)
        body = {
            "status": row.status, "message": row.message, "txid": row.txid, "state": row.state,
            "framework": row.framework, "attempts": row.attempts, "created_at": row.created_at,
            "started_at": row.started_at, "finished_at": row.finished_at,
            "phase": row.phase, "progress": row.progress,
            "report_url": report_url(row.txid, row.owner),
        }
        if row.state == "done":
            body["filename"] = row.filename
            # Checked again as it is read: a row stored before reports were checked (or
            # by another version) must not break this response, ever.
            body["report"], body["report_withheld"] = stored_report(row.report)
        elif row.state == "queued":
            with context.database().session() as session:
                body["queue_position"] = session.scalar(
                    select(func.count()).select_from(Transaction).where(
                        Transaction.state == "queued", Transaction.created_at < row.created_at))
        return body


def wait_for_end(row: Transaction, seconds: float) -> Transaction:
    """``row`` read again once its job has ended or ``seconds`` have passed (at once when
    this process already holds its cap of waiting calls; see :mod:`edgeai.api.waiting`)."""
    waits = current_app.extensions["edgeai.waits"]
    with waits.slot() as granted:
        if not granted:
            metrics.wait_refused()
            return row
        runner = current_app.extensions.get("edgeai.runner")
        waits.until_ended(context.database(), row.txid, seconds,
                          getattr(runner, "ended", None))
    with context.database().session() as session:
        fresh = session.get(Transaction, row.txid)
        if fresh is None:  # deleted meanwhile: what was read is all there is
            return row
        session.expunge(fresh)
        return fresh


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
        row = find_transaction(["txid", "format"])
        if row.state == "expired":
            raise Gone(row.message, status=row.status)
        if row.state != "done":
            reason = {"queued": "is queued", "running": "is still running",
                      "failed": "failed"}[row.state]
            raise Conflict(f"The transaction {reason}; nothing to download. {row.message}"
                           .strip(), status=row.status)
        fmt = (request.args.get("format") or "model").strip()
        artifacts = (stored_report(row.report)[0] or {}).get("artifacts") or {
            "model": row.filename}
        allowed = list(spec_for(row.framework).downloads)
        if fmt not in allowed:
            raise BadRequest(f"format={fmt[:40]!r} is not available; allowed: "
                             f"{', '.join(allowed)}.", status=row.status)
        filename = artifacts.get(fmt)
        if not filename:
            raise Conflict(f"No {fmt} file exists for this model: {_why_missing(row, fmt)}",
                           status=row.status)
        try:
            download = context.storage().open_download(row.txid, filename)
        except ValueError:  # a stored name that is not a bare file name: nothing to send
            download = None
        if download is None:
            raise Gone("The pruned model file is gone; submit the model again.")
        if download.url:  # EDGEAI_S3_DOWNLOADS=redirect: a presigned URL of the store
            return redirect(download.url)
        response = send_file(download.source, as_attachment=True, download_name=filename,
                             mimetype="application/octet-stream", max_age=0)
        if download.size is not None:
            response.content_length = download.size
        return response


@ns.route("cancel")
class Cancel(Resource):
    """Stop a transaction that has not finished."""

    @ns.expect(txid_parser)
    @ns.response(200, f"Cancelled at once (it was queued): failed, {CANCELLED!r}",
                 status_model)
    @ns.response(202, f"Cancelling (it is running): its worker stops it within seconds and "
                 f"it ends failed, {CANCELLED!r}", status_model)
    @ns.response(404, NOT_FOUND, error_model)
    @ns.response(409, "Already finished (done, failed or expired): nothing to cancel",
                 error_model)
    @ns.response(400, "txid missing, or an unknown parameter", error_model)
    @ns.response(401, "Missing or invalid API key", error_model)
    @ns.marshal_with(status_model, skip_none=True)
    def post(self):
        """Cancel a queued or running transaction; it ends failed, "cancelled by the client"."""
        row = find_transaction(["txid"])
        refuse_unknown([*request.form.keys(), *request.files.keys()], [], "form field")
        try:
            row, acted = cancel_job(context.database(), context.storage(), row.txid)
        except LookupError:  # deleted since it was read
            raise NotFound(NOT_FOUND) from None
        if not acted:
            raise Conflict(f"The transaction {_finished(row)}; nothing to cancel.",
                           status=row.status)
        body = {"status": row.status, "message": row.message, "txid": row.txid,
                "state": row.state, "phase": row.phase, "progress": row.progress}
        if row.state == "running":
            body["message"] = ("Cancelling: the worker running this job stops it within "
                               f"seconds; status then says {CANCELLED!r}.")
            return body, 202
        return body


def _finished(row: Transaction) -> str:
    """How a transaction that cannot be cancelled ended, for the 409's message."""
    if row.state == "done":
        return "is done (download it)"
    if row.state == "expired":
        return "is done and its file expired"
    return f"already failed: {row.message}"
