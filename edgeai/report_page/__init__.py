"""The report page: ``/report/<token>``, one transaction's report as a self-contained HTML page.

The status response gives each transaction a ``report_url`` carrying a signed, expiring
token (:mod:`edgeai.report_page.links`), so the link can be opened in a browser or sent
to a colleague without API headers. The page is rendered on the server — inline CSS and
inline SVG charts, no script, nothing fetched from anywhere — under a Content-Security-
Policy that forbids every outside source. It lives outside ``/api``, so it is not an
operation of the Swagger spec.

Downloads go through ``/report/<token>/download?format=...``, which streams the same
artifact as ``GET /api/download``: a page opened without API headers could not use that
route, and a curl line would have to carry the client's secret, which the page must
never hold. The token is the only credential; it opens this one transaction's files
until it expires, as the page itself does. The page links them relatively
(``<token>/download?...``), so they work under whatever path the page was reached at.

Every way a token can fail — malformed, tampered, expired, another secret, another
client's transaction, a revoked key — answers the same 404, so a token reveals nothing.
"""
from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import IO, cast

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from edgeai.api import context
from edgeai.db import ApiKey, Transaction
from edgeai.pruning.report import stored_report
from edgeai.report_page.links import ReportLinks
from edgeai.report_page.view import build_page, when

log = logging.getLogger("edgeai")
blueprint = Blueprint("report_page", __name__, template_folder="templates")

REFRESH_SECONDS = 3


def links() -> ReportLinks:
    """The app's report links."""
    from flask import current_app

    return current_app.extensions["edgeai.report_links"]


def report_url(txid: str, client_id: str) -> str:
    """The absolute address of ``txid``'s report page, for this request: under
    ``EDGEAI_PUBLIC_URL`` when set, else the host and scheme the request came to."""
    token = links().token_for(txid, client_id)
    base = context.settings().public_url
    if base:
        return base + url_for("report_page.page", token=token)
    return url_for("report_page.page", token=token, _external=True)


def _not_found() -> Response:
    """The one 404 every unusable token gets."""
    return Response(render_template("report_page/not_found.html"), status=404)


def _open(token: str) -> Transaction:
    """The transaction a valid token names, if its client still owns it; else a 404."""
    opened = links().open(token)
    if opened is None:
        abort(_not_found())
    txid, client_id = opened
    with context.database().session() as session:
        row = session.get(Transaction, txid)
        key = session.get(ApiKey, client_id) if context.settings().auth == "on" else None
        revoked = context.settings().auth == "on" and (key is None or key.revoked_at)
        if row is None or row.owner != client_id or revoked:
            abort(_not_found())
        session.expunge(row)
    return row


@blueprint.get("/report/<token>")
def page(token: str):
    """The HTML report of the transaction the token names."""
    row = _open(token)
    view = build_page(row)
    refresh = REFRESH_SECONDS if row.state in ("queued", "running") else None
    return render_template("report_page/report.html", page=view, token=token, when=when,
                           refresh=refresh, link_hours=links().settings.report_link_hours)


@blueprint.get("/report/<token>/download")
def download(token: str):
    """One of the transaction's files (``?format=``, default ``model``), as an attachment."""
    row = _open(token)
    fmt = request.args.get("format", "model")
    report = stored_report(row.report)[0] or {}
    filename = (report.get("artifacts") or {"model": row.filename}).get(fmt)
    if row.state != "done" or not filename:
        abort(_not_found())
    try:
        found = context.storage().open_download(row.txid, filename)
    except ValueError:  # a stored name that is not a bare file name
        found = None
    if found is None:
        abort(_not_found())
    if found.url:  # EDGEAI_S3_DOWNLOADS=redirect: a presigned URL of the store
        return redirect(found.url)
    source = cast(IO[bytes] | Path, found.source)  # a path, or a stream with read()
    response = send_file(source, as_attachment=True, download_name=filename,
                         mimetype="application/octet-stream", max_age=0)
    if found.size is not None:
        response.content_length = found.size
    return response


@blueprint.before_request
def _nonce() -> None:
    """A fresh nonce per response for the page's one inline stylesheet."""
    g.style_nonce = secrets.token_urlsafe(16)


@blueprint.after_request
def _headers(response: Response) -> Response:
    """No outside source, no framing, no referrer (the link is the credential), no cache."""
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{g.style_nonce}'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    response.headers["Cache-Control"] = "private, no-store"
    return response


def init_app(app: Flask) -> None:
    """Register the page and its signer; warn when links would open on one host only."""
    settings = app.extensions["edgeai.settings"]
    app.extensions["edgeai.report_links"] = ReportLinks(settings)
    app.register_blueprint(blueprint)
    if settings.storage_url and not settings.report_secret:
        log.warning("EDGEAI_REPORT_SECRET is not set: report links are signed with a secret "
                    "kept in this host's data dir and open only on hosts sharing it. Give "
                    "every API host the same EDGEAI_REPORT_SECRET.")
