"""The report page through Flask's test client: tokens open one transaction for one client,
for a while; every failure is the same 404; hostile names stay text; downloads stream."""
from __future__ import annotations

import io
import re
import time

import pytest
from itsdangerous import URLSafeTimedSerializer

from edgeai import create_app
from edgeai.auth import create_key, revoke_key
from edgeai.db import Transaction
from edgeai.queue import claim_next_job, finish_job
from edgeai.report_page.links import SALT, SECRET_FILE

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def rich_report(filename: str) -> dict:
    """A report as a finished analysis job stores it, with names an attacker chose."""
    check = {"passed": True, "max_abs_diff": 1e-7, "max_rel_diff": 2e-8, "tolerance": 1e-4}
    return {
        "framework": "tensorflow", "percent": 0.4, "round_to": 1,
        "layers": [
            {"name": HOSTILE, "type": "Conv2D", "channels_before": 32, "channels_after": 19,
             "status": "pruned"},
            {"name": "conv2d_1", "type": "Conv2D", "channels_before": 64,
             "channels_after": 38, "status": "pruned"},
            {"name": "dense_1", "type": "Dense", "channels_before": 10, "channels_after": 10,
             "status": "output", "reason": '"></text><script>alert(2)</script>'},
        ],
        "params_before": 1_000_000, "params_after": 400_000, "macs_before": 5_000_000,
        "macs_after": 2_000_000, "file_size_before": 4_000_000, "file_size_after": 1_600_000,
        "verification": {"exactness": check, "round_trip": check},
        "evaluation": {"metric": "top1_accuracy", "samples": 50, "before": 0.91,
                       "after_prune": 0.80, "after_recovery": 0.88},
        "speed": {"threads": 1, "latencies": [{"runtime": "keras", "batch": 1,
                                              "before_ms": 2.0, "after_ms": 1.2,
                                              "ratio": 0.6}]},
        "sensitivity": {"metric": "top1_accuracy", "baseline": 0.91,
                        "ratios": [0.1, 0.5, 0.9], "plan": {HOSTILE: 0.5},
                        "groups": [{"group": HOSTILE, "members": [HOSTILE],
                                    "metric": [0.9, 0.85, 0.4], "cost": [0.9, 0.6, 0.3]},
                                   {"group": "conv2d_1", "members": ["conv2d_1"],
                                    "metric": [0.91, 0.9, 0.7], "cost": [0.9, 0.5, 0.2]}],
                        "plan_result": {"cost": 0.6, "metric": 0.85},
                        "uniform": {"percent": 0.3, "cost": 0.6, "metric": 0.8}},
        "warnings": [HOSTILE],
        "artifacts": {"model": filename, "plan": filename},
    }


def submit(client, headers) -> str:
    response = client.post("/api/tf_prune?percent=0.4&ommitted=", headers=headers,
                           data={"model": (io.BytesIO(H5), "mnist_base.h5")})
    return response.get_json()["txid"]


def finish(app, txid, filename="tmpabcdefgh.h5", payload=b"pruned-bytes", report=None):
    """Take the job through the real queue and publish a real artifact (rows other
    tests left queued on the shared app are failed on the way)."""
    database, storage = app.extensions["edgeai.db"], app.extensions["edgeai.storage"]
    while (row := claim_next_job(database, "test-worker", max_running=5)).txid != txid:
        finish_job(database, row.txid, "test-worker", state="failed", message="not this one")
    produced = storage.work_dir(txid) / filename
    produced.write_bytes(payload)
    storage.publish(txid, produced, filename)
    assert finish_job(database, txid, "test-worker", state="done", message="summary",
                      filename=filename, report=(report or rich_report)(filename))


def report_path(client, txid, headers) -> str:
    url = client.get(f"/api/status?txid={txid}", headers=headers).get_json()["report_url"]
    assert url.startswith("http://localhost/report/")
    return url.removeprefix("http://localhost")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app for the module (each test makes its own keys and jobs): apps migrate a
    fresh database each, which is most of these tests' time."""
    shared = create_app({"data_dir": tmp_path_factory.mktemp("report-page") / "var",
                         "run_jobs": False})
    yield shared
    shared.extensions["edgeai.db"].dispose()


def issue(app) -> dict:
    """Headers of a new client of ``app``."""
    key = create_key(app.extensions["edgeai.db"], "report-page")
    return {"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}


@pytest.fixture
def done(app, client, headers):
    """A finished transaction of ``headers``'s client: (txid, its report page path)."""
    txid = submit(client, headers)
    finish(app, txid)
    return txid, report_path(client, txid, headers)


def test_done_page_shows_summary_charts_and_downloads(client, done):
    txid, path = done
    response = client.get(path)  # no API headers
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert txid in page and 'id="summary"' in page
    assert 'id="layer-chart"' in page and page.count('class="layer"') == 3
    assert 'id="sensitivity-chart"' in page and page.count("<polyline") == 2
    assert "400 k" in page and '<span class="delta better">-60.0%' in page  # parameters
    assert '<span class="delta worse">-3.3%' in page  # accuracy fell: higher is better
    assert "top1_accuracy" in page and "0.88" in page
    assert "http-equiv=\"refresh\"" not in page
    # Relative to the page, so it works under any EDGEAI_PUBLIC_URL path.
    link = re.search(r'href="([^"/]+/download\?format=model)"', page).group(1)
    file = client.get(f"/report/{link}")
    assert file.status_code == 200 and file.data == b"pruned-bytes"
    assert "tmpabcdefgh.h5" in file.headers["Content-Disposition"]


def test_hostile_names_are_text(client, done):
    page = client.get(done[1]).get_data(as_text=True)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "</text><script>" not in page


def test_strict_headers(client, done):
    response = client.get(done[1])
    policy = response.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; style-src 'nonce-")
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    assert f'<style nonce="{nonce}">' in response.get_data(as_text=True)
    assert "http" not in policy and "unsafe" not in policy
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "no-store" in response.headers["Cache-Control"]


def test_queued_page_reloads_itself(client, headers):
    txid = submit(client, headers)
    page = client.get(report_path(client, txid, headers)).get_data(as_text=True)
    assert 'http-equiv="refresh"' in page and "queued" in page
    assert 'id="summary"' not in page


def not_found(client, path):
    response = client.get(path)
    assert response.status_code == 404
    body = response.get_data(as_text=True)
    assert "Report not found" in body
    return re.sub(r'nonce="[^"]+"', "", body)  # the only part that differs per response


def test_tampered_and_garbage_tokens_404_alike(client, done):
    path = done[1]
    token = path.split("/")[2]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    bodies = {not_found(client, f"/report/{flipped}"), not_found(client, "/report/x"),
              not_found(client, f"/report/{flipped}/download?format=model"),
              not_found(client, f"/report/{token}.{token}")}
    assert len(bodies) == 1


def test_foreign_token_does_not_open_another_clients_page(app, client, headers, new_key,
                                                          done):
    """A's token names A's transaction; a token for B's transaction signed with A's id
    (what a leaked secret could make) opens nothing, and neither does a foreign secret."""
    other = new_key("other")
    theirs = submit(client, other)
    finish(app, theirs, filename="tmpzzzzzzzz.h5")
    mine_id = headers["X-IBM-Client-Id"]
    serializer = app.extensions["edgeai.report_links"].serializer
    not_found(client, f"/report/{serializer.dumps([theirs, mine_id])}")
    not_found(client, f"/report/{serializer.dumps([theirs, mine_id])}/download")
    stranger = URLSafeTimedSerializer("another server's secret" * 2, salt=SALT)
    not_found(client, f"/report/{stranger.dumps([done[0], mine_id])}")
    assert client.get(report_path(client, theirs, other)).status_code == 200


def test_revoked_key_closes_its_links(app, client, headers, done):
    assert client.get(done[1]).status_code == 200
    revoke_key(app.extensions["edgeai.db"], headers["X-IBM-Client-Id"])
    not_found(client, done[1])


def test_expired_token_404s(make_app):
    app = make_app(report_link_hours=0.0003)  # about one second
    client = app.test_client()
    key = issue(app)
    txid = submit(client, key)
    path = report_path(client, txid, key)
    assert client.get(path).status_code == 200
    time.sleep(2.2)
    not_found(client, path)


def test_secret_file_is_private_and_shared(app, client, headers):
    txid = submit(client, headers)
    path = report_path(client, txid, headers)
    data_dir = app.extensions["edgeai.settings"].data_dir
    assert (data_dir / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    # Another process on the same data dir (a second gunicorn worker) opens the link.
    second = create_app({"data_dir": data_dir, "run_jobs": False})
    assert second.test_client().get(path).status_code == 200
    second.extensions["edgeai.db"].dispose()


def test_configured_secret_and_public_url(make_app, data_dir):
    app = make_app(report_secret="s" * 40, public_url="https://edgeai.example.com")
    client = app.test_client()
    key = issue(app)
    txid = submit(client, key)
    url = client.get(f"/api/status?txid={txid}", headers=key).get_json()["report_url"]
    assert url.startswith("https://edgeai.example.com/report/")
    assert not (data_dir / SECRET_FILE).exists()
    signed = URLSafeTimedSerializer("s" * 40, salt=SALT).dumps([txid, key["X-IBM-Client-Id"]])
    assert client.get(f"/report/{signed}").status_code == 200


def analysis_report(filename: str) -> dict:
    """A tf_analyze report as the service stores it: no pruned model, checks not run, the
    analysis's own metric left unnamed (the evaluation names it)."""
    unrun = {"passed": None, "max_rel_diff": None, "detail": None}
    return {
        "framework": "tensorflow", "percent": 0.0, "params_before": 6378,
        "macs_before": 305472, "file_size_before": 127913,
        "verification": {"exactness": unrun, "round_trip": unrun},
        "evaluation": {"metric": "top1_accuracy", "samples": 40, "before": 1.0},
        "sensitivity": {"metric": None, "baseline": 1.0, "ratios": [0.1, 0.2, 0.3],
                        "target": {"metric": "macs", "keep": 0.6}, "plan": {"conv1": 0.2},
                        "groups": [{"group": "conv1", "members": ["conv1"],
                                    "metric": [1.0, 0.9, 0.7], "cost": [0.9, 0.8, 0.7]}],
                        "plan_result": {"cost": 0.57, "metric": 1.0},
                        "uniform": {"percent": 0.2349, "cost": 0.57, "metric": 0.95}},
        "artifacts": {"model": filename, "plan": filename},
    }


def test_analysis_page_shows_the_original_the_curves_and_the_plan(app, client, headers):
    txid = submit(client, headers)
    finish(app, txid, filename="tmpanalysis.plan.json", report=analysis_report)
    page = client.get(report_path(client, txid, headers)).get_data(as_text=True)
    summary = page.split('id="summary"', 1)[1].split("</section>", 1)[0]
    assert "6.38 k" in summary and "the uploaded model" in summary
    assert "–" not in summary and "not run" not in summary and "from " not in summary
    assert "for macs keep 0.6" in summary
    assert "Sensitivity: top1_accuracy when one group alone" in page
    assert page.count("<circle") == 1  # conv1's plan ratio on its curve
    assert 'id="plan-vs-uniform"' in page and "percent=0.2349" in page


def test_running_page_shows_phase_and_progress(app, client, headers):
    txid = submit(client, headers)
    with app.extensions["edgeai.db"].session() as session:
        row = session.get(Transaction, txid)
        row.state, row.phase, row.progress = "running", "pruning", 0.4
    page = client.get(report_path(client, txid, headers)).get_data(as_text=True)
    assert "<strong>pruning</strong> · 40%" in page
    assert '<rect class="after" width="160.0"' in page
    assert 'http-equiv="refresh"' in page


def latency_report(filename: str) -> dict:
    """A prune with target=latency:0.5 and a dataset, as the pipeline stores it."""
    report = rich_report(filename)
    del report["sensitivity"]
    report["plan"] = {HOSTILE: 0.45, "conv2d_1": 0.3}
    report["target"] = {
        "metric": "latency", "keep": 0.5, "runtime": "tflite", "batch": 1, "threads": 1,
        "original_ms": 12.5, "guided_by": "your data: each step takes the group with the best "
        "latency saved per top1_accuracy lost", "estimate": "MACs and output elements",
        "measurements": 2, "fractions": {HOSTILE: 0.45, "conv2d_1": 0.3}, "chosen_step": 2,
        "reached": 0.48, "measured": True, "met": True, "interval": [0.46, 0.52],
        "within_noise": True, "before_ms": 12.5, "after_ms": 6.0,
        "detail": "met: 0.480 of the original's latency in tflite; met within measurement noise",
        "steps": [{"step": 0, "group": None, "fraction": None, "estimate": 1.0,
                   "corrected_estimate": 1.0, "metric": 0.91},
                  {"step": 1, "group": HOSTILE, "fraction": 0.45, "estimate": 0.7,
                   "corrected_estimate": 0.72, "metric": 0.9,
                   "measured": {"ratio": 0.61, "interval": [0.6, 0.63]}},
                  {"step": 2, "group": "conv2d_1", "fraction": 0.3, "estimate": 0.5,
                   "corrected_estimate": 0.48, "metric": 0.88,
                   "measured": {"ratio": 0.48, "interval": [0.46, 0.52]}}],
        "curves": {"search": [[1.0, 0.91], [0.72, 0.9], [0.48, 0.88]],
                   "uniform": [[1.0, 0.91], [0.8, 0.89], [0.6, 0.85], [0.45, 0.8]]}}
    return report


def test_latency_page_shows_the_verdict_the_curves_and_the_steps(app, client, headers):
    txid = submit(client, headers)
    finish(app, txid, report=latency_report)
    page = client.get(report_path(client, txid, headers)).get_data(as_text=True)
    section = page.split('id="latency-search"', 1)[1].split("</section>", 1)[0]
    assert "keep 0.5 of the original's time in tflite" in section
    assert 'id="budget-verdict">met</span>' in section and "within measurement noise" in section
    assert 'id="latency-chart"' in section and section.count("<polyline") == 2
    assert "the search&#39;s path" in section and "uniform pruning" in section
    assert section.count('class="chosen"') == 1 and "0.61 (0.6–0.63)" in section
    assert "<script>" not in page and "&lt;script&gt;" in section
    assert "each group pruned by its own fraction" in page


def test_a_latency_target_of_the_wrong_shape_is_shown_as_dashes(app, client, headers):
    """``target`` is free-form JSON that the job wrote: numbers where text goes, text
    where numbers go, lists and objects anywhere never break the page."""
    def odd(filename):
        report = latency_report(filename)
        report["target"].update({
            "keep": "half", "original_ms": "fast", "batch": [1], "threads": {"n": 1},
            "met": "yes", "chosen_step": [2], "detail": {"x": 1},
            "steps": [5, "x", {"step": [0], "group": ["a"], "estimate": "e",
                               "measured": {"ratio": [1], "interval": 7}},
                      {"step": 1, "measured": {"ratio": 0.5, "interval": ["a", None, 3]}}],
            "curves": {"search": [[1.0], "x", [1.0, "y"], [True, 0.5], [0.7, 0.8], [0.5, 0.7]],
                       "uniform": 5}})
        return report

    txid = submit(client, headers)
    finish(app, txid, report=odd)
    response = client.get(report_path(client, txid, headers))
    assert response.status_code == 200
    section = response.get_data(as_text=True).split('id="latency-search"', 1)[1].split(
        "</section>", 1)[0]
    assert "keep half of the original's time" in section
    assert 'id="budget-verdict">not met</span>' in section  # only true is met
    assert section.count("<polyline") == 1 and section.count("<circle") == 3  # 2 dots + chosen
    assert "the original runs in" not in section and section.count("<tr") == 3  # head + 2
