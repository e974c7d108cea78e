"""The report a job hands back is data: check_report parses it into the typed JobReport
or refuses it naming the field; what it returns (and whatever a row already holds) is
served by status and the report page without error."""
from __future__ import annotations

import dataclasses
import enum
import io
import json
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeai import create_app
from edgeai.auth import create_key
from edgeai.db import Transaction
from edgeai.pruning.report import (
    MAX_COUNT,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_NODES,
    MAX_REPORT_BYTES,
    NAME_CHARS,
    TEXT_CHARS,
    Check,
    JobReport,
    LayerChange,
    LayerStatus,
    ReportRejected,
    check_report,
    clean_text,
    stored_report,
)
from edgeai.queue import claim_next_job, finish_job

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64


def real_report() -> dict:
    """A report as the pipeline makes one: the dataclasses, filled, then to_dict()."""
    report = JobReport(framework="pytorch", percent=0.5, params_before=1_199_882,
                       params_after=596_042, macs_before=12_000_000, macs_after=5_000_000,
                       file_size_before=4_800_000, file_size_after=2_400_000,
                       layers=[LayerChange("conv1", "Conv2d", 32, 16, LayerStatus.PRUNED),
                               LayerChange("fc2", "Linear", 10, 10, LayerStatus.OUTPUT,
                                           "a model output")],
                       timings={"load": 0.5, "rewrite": 0.1}, warnings=["round_to=8 helps"],
                       artifacts={"model": "tmpabcdefgh.pt", "state_dict": None},
                       target={"metric": "macs", "keep": 0.5, "reached": 0.49},
                       sandbox={"layers": {"view": True}, "notes": {}, "peak_rss_mb": 300.5})
    report.verification.exactness = Check(True, 1e-7, 2e-8, 1e-4, "seeded batch", 0.2)
    report.fill_ratios()
    return report.to_dict()


def test_a_real_report_comes_back_unchanged():
    report = real_report()
    assert check_report(report) == report
    assert check_report(json.loads(json.dumps(report))) == report


@pytest.mark.parametrize("change, says", [
    ({"percent": [0] * 1000}, "report.percent: expected a finite number in [0, 1), got a list"),
    ({"percent": 1.0}, "report.percent: expected a finite number in [0, 1), got 1"),
    ({"percent": float("nan")}, "report.percent: expected a finite number in [0, 1), got nan"),
    ({"percent": True}, "report.percent: expected a finite number in [0, 1), got a boolean"),
    ({"params_after": -1}, "report.params_after: expected a whole number in [0, 2**53), got -1"),
    ({"params_after": MAX_COUNT}, "report.params_after: expected a whole number in [0, 2**53)"),
    ({"params_after": 1.5}, "report.params_after: expected a whole number"),
    ({"macs_ratio": -0.1}, "report.macs_ratio: expected a finite number >= 0, got -0.1"),
    ({"timings": {"load": float("inf")}}, "report.timings['load']: expected a finite number"),
    ({"layers": [{"name": "x", "channels_before": "32"}]},
     "report.layers[0].channels_before: expected a whole number in [0, 2**53), got text"),
    ({"layers": [{"status": "gone"}]},
     "report.layers[0].status: expected one of pruned, unchanged, output, omitted, "
     "unsupported, got 'gone'"),
    ({"verification": {"exactness": {"passed": "yes"}}},
     "report.verification.exactness.passed: expected true or false, got text"),
    ({"verification": None}, "report.verification: expected an object, got null"),
    ({"artifacts": {"model": "../../edgeai.sqlite3"}},
     "report.artifacts['model']: expected a bare file name"),
    ({"artifacts": {"model": ".report-secret"}}, "expected a bare file name"),
    ({"exports": {"onnx": {"file": "a\nb.onnx"}}}, "report.exports['onnx'].file: expected a "
                                                   "bare file name"),
    ({"loot": "the database"}, "report: unknown field 'loot' (allowed: framework, percent,"),
    ({"layers": [{"name": "x", "evil": 1}]}, "report.layers[0]: unknown field 'evil'"),
    ({"sensitivity": {"baseline": float("nan")}},
     "report.sensitivity['baseline']: expected a finite number"),
    ({"sandbox": {"n": 2 ** 60}}, "report.sandbox['n']: expected a number below 2**53"),
    ({"target": {"k" * (NAME_CHARS + 1): 1}}, f"(at most {NAME_CHARS})"),
    ({"warnings": ["w"] * (MAX_ITEMS + 1)}, f"report.warnings: {MAX_ITEMS + 1} entries"),
    ({"sensitivity": {"groups": [[]] * (MAX_ITEMS + 1)}}, "entries (at most"),
    ({"target": {"a": {"a": 1}, "\x1ba": 2, "a\x1b": 3}}, "key 'a' twice"),
])
def test_what_is_not_a_report_is_refused_naming_the_field(change, says):
    with pytest.raises(ReportRejected) as refused:
        check_report({**real_report(), **change})
    assert says in str(refused.value)


def test_nesting_values_and_size_are_bounded():
    deep: list = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ReportRejected, match=f"nested deeper than {MAX_DEPTH} levels"):
        check_report({"sensitivity": {"x": deep}})
    fine = [[0] * 100 for _ in range(MAX_NODES // 100 - 10)]
    check_report({"sensitivity": {"x": fine[: MAX_NODES // 200]}})
    with pytest.raises(ReportRejected, match=f"more than {MAX_NODES} values"):
        check_report({"sensitivity": {"x": fine + [[0] * 200]}})
    texts = ["t" * TEXT_CHARS] * (MAX_REPORT_BYTES // TEXT_CHARS + 1)
    with pytest.raises(ReportRejected, match=f"bytes as JSON \\(at most {MAX_REPORT_BYTES}\\)"):
        check_report({"warnings": texts[: MAX_ITEMS]})


def test_text_is_cleaned_and_cut():
    checked = check_report({"warnings": ["a\x1b[31mb\x00c\x7f\x9b\u202e\ud800\n\tz",
                                         "w" * 10_000],
                            "layers": [{"name": "conv\x07", "reason": "r\r\n"},
                                       {"name": "n" * 5000}]})
    assert checked["warnings"][0] == "a[31mbc\n\tz"
    assert len(checked["warnings"][1]) <= TEXT_CHARS
    assert checked["warnings"][1].endswith("more characters]")
    assert checked["layers"][0]["name"] == "conv" and checked["layers"][0]["reason"] == "r\n"
    assert len(checked["layers"][1]["name"]) <= NAME_CHARS
    assert check_report(checked) == checked  # cut once, never again


def test_clean_text_takes_text_only_and_bounds_it():
    assert clean_text("summary\n\tline\x1b]0;title\x07", 100) == "summary\n\tline]0;title"
    assert len(clean_text("x" * 10 ** 7, 2000)) <= 2000
    with pytest.raises(ReportRejected, match="expected text, got a list"):
        clean_text(["x"], 10)


def _hostile(hint) -> typing.Any:
    """A value no field of type ``hint`` may hold."""
    return float("nan") if hint is typing.Any or typing.get_args(hint)[-1:] == (
        typing.Any,) else [[0], {"x": 1}]


def _every_field(cls=JobReport, path="report"):
    """(path, example report, hint) for every field of the report's dataclasses, however
    many there are now: a field added later is checked here without touching the test."""
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        base = typing.get_args(hint)[0] if typing.get_origin(hint) in (
            typing.Union, __import__("types").UnionType) else hint
        yield f"{path}.{item.name}", {item.name: _hostile(hint)}, hint
        if dataclasses.is_dataclass(base):
            for sub_path, sub, sub_hint in _every_field(base, f"{path}.{item.name}"):
                yield sub_path, {item.name: sub}, sub_hint
        elif typing.get_origin(base) in (list, dict) and dataclasses.is_dataclass(
                typing.get_args(base)[-1]):
            inner = typing.get_args(base)[-1]
            for sub_path, sub, sub_hint in _every_field(inner, "x"):
                wrapped = [sub] if typing.get_origin(base) is list else {"k": sub}
                index = "[0]" if typing.get_origin(base) is list else "['k']"
                yield f"{path}.{item.name}{index}{sub_path[1:]}", {item.name: wrapped}, sub_hint


FIELDS = list(_every_field())


@pytest.mark.parametrize("path, report, hint", FIELDS, ids=[f[0] for f in FIELDS])
def test_every_field_of_every_dataclass_is_checked(path, report, hint):
    with pytest.raises(ReportRejected) as refused:
        check_report(report)
    assert str(refused.value).startswith(path), str(refused.value)


# -- fuzzing: any JSON, and reports of the right shape with hostile values ----------------

def _texts():
    return st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(
        ["\x1b[2J\x1b[H", "a\x00b", "\ud800", "../../x", ".hidden", "x" * 3000, ""])


def _json(max_leaves=30):
    leaves = (st.none() | st.booleans() | st.integers(-2 ** 60, 2 ** 60) | st.floats()
              | _texts())
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(_texts(), inner, max_size=5), max_leaves=max_leaves)


def _analysis_like() -> st.SearchStrategy:
    """Free-form objects shaped like what the page draws (an analysis, a target), with any
    value where a number belongs."""
    number = st.floats() | st.integers(-2 ** 53 + 1, 2 ** 53 - 1) | _json(3)
    numbers = st.lists(st.floats(-1e9, 1e9) | st.integers(0, 10), min_size=1, max_size=9)
    curve = st.one_of(numbers, numbers, numbers, _json(3))
    pair = st.fixed_dictionaries({}, optional={"cost": number, "metric": number,
                                               "percent": number})
    target = st.fixed_dictionaries({}, optional={"metric": number | _texts(), "keep": number,
                                                 "reached": number})
    groups = st.lists(st.fixed_dictionaries({"metric": curve}, optional={
        "group": _texts() | _json(2)}), min_size=1, max_size=4)
    rest = {"baseline": number, "metric": _texts() | _json(2),
            "plan": st.dictionaries(_texts(), number, max_size=4) | _json(3),
            "target": target | _json(3), "plan_result": pair | _json(3),
            "uniform": pair | _json(3)}
    drawn = st.fixed_dictionaries({"ratios": numbers, "groups": groups}, optional=rest)
    return drawn | st.fixed_dictionaries({}, optional={
        "ratios": curve, "groups": groups | _json(3), **rest}) | target


def _of_type(hint) -> st.SearchStrategy:
    """Values of ``hint`` (mostly right, with the edges of each type), sometimes any JSON."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of(*[_of_type(arm) for arm in typing.get_args(hint)])
    if hint is type(None):
        return st.none()
    if hint is typing.Any:
        return _json() | _analysis_like()
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return st.fixed_dictionaries({}, optional={
            item.name: _of_type(hints[item.name]) for item in dataclasses.fields(hint)})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from([m.value for m in hint]) | _texts()
    if origin is list:
        return st.lists(_of_type(typing.get_args(hint)[0]), max_size=4)
    if origin is dict:
        items = st.dictionaries(_texts(), _of_type(typing.get_args(hint)[1]), max_size=4)
        return items | _analysis_like() if typing.get_args(hint)[1] is typing.Any else items
    right = {int: st.integers(0, 2 ** 53 - 1) | st.sampled_from([-1, 2 ** 53, 0]),
             float: st.floats(0, 0.999) | st.floats(), bool: st.booleans(),
             str: _texts()}[hint]
    return st.one_of(right, right, right, _json(4))


# Reports of the right shape with hostile values; any JSON; and a real report whose
# free-form fields (which the page draws from) hold anything.
REPORTS = _of_type(JobReport) | _json() | st.builds(
    lambda sensitivity, target: {**real_report(), "sensitivity": sensitivity,
                                 "target": target},
    _analysis_like() | _json(), _analysis_like() | _json())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An app, a client of it and one done transaction whose stored report each example
    replaces (straight in the database, as a row written before reports were checked)."""
    app = create_app({"data_dir": tmp_path_factory.mktemp("fuzz") / "var", "run_jobs": False})
    key = create_key(app.extensions["edgeai.db"], "fuzz")
    headers = {"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}
    client = app.test_client()
    txid = client.post("/api/tf_prune?percent=0.4", headers=headers,
                       data={"model": (io.BytesIO(H5), "m.h5")}).get_json()["txid"]
    database = app.extensions["edgeai.db"]
    claim_next_job(database, "fuzz", 5)
    finish_job(database, txid, "fuzz", state="done", message="summary",
               filename="tmpabcdefgh.h5", report=real_report())
    url = client.get(f"/api/status?txid={txid}", headers=headers).get_json()["report_url"]
    yield app, client, headers, txid, url.removeprefix("http://localhost")
    database.dispose()


def _serve(served, stored) -> tuple[dict, str]:
    """Store ``stored`` as the row's report; return the status body and the page."""
    app, client, headers, txid, page = served
    with app.extensions["edgeai.db"].session() as session:
        session.get(Transaction, txid).report = stored
    status = client.get(f"/api/status?txid={txid}", headers=headers)
    assert status.status_code == 200, status.get_data(as_text=True)[-2000:]
    shown = client.get(page)
    assert shown.status_code == 200, shown.get_data(as_text=True)[-2000:]
    return status.get_json(), shown.get_data(as_text=True)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=REPORTS)
def test_any_json_is_refused_or_served_without_error(served, data):
    try:
        checked = check_report(data)
    except ReportRejected as error:
        assert str(error).startswith("report")
        checked = None
    if checked is not None:
        assert check_report(checked) == checked
        json.dumps(checked, allow_nan=False).encode("utf-8")
        body, page = _serve(served, checked)
        assert body["report"].get("percent") == checked["percent"]
        assert "report_withheld" not in body and 'id="summary"' in page
    # The input as it is, in a row written before reports were checked (SQLite holds
    # whatever json.dumps writes): status and the page still answer, showing it checked
    # or saying why it is withheld.
    body, page = _serve(served, data)
    assert ("report" in body) != ("report_withheld" in body) or data is None
    assert ('id="withheld"' in page) == ("report_withheld" in body)


def test_a_stored_percent_list_of_millions_no_longer_breaks_status_or_the_page(served):
    """The row a hostile job left before this check: status answered 500 for it (a
    marshalling error) and the page multiplied a list of millions of zeros by 100."""
    from flask_restx import marshal
    from flask_restx.fields import MarshallingError

    from edgeai.api.transactions import status_model

    stored = {**real_report(), "percent": [0] * 1_000_000}
    with pytest.raises(MarshallingError):  # the live payload, where nothing checks it
        marshal({"status": "0", "report": stored}, status_model)
    # (The old page computed ``percent * 100``: a list of 100 million zeros, not run here.)
    body, page = _serve(served, stored)
    assert "report" not in body
    assert body["report_withheld"].startswith("The report is withheld: it is not a valid "
                                              "report (report.percent: expected a finite")
    assert "Report withheld" in page and len(page) < 20_000


def test_stored_report_never_raises():
    assert stored_report(None) == (None, None)
    assert stored_report({"percent": 0.1})[0]["percent"] == 0.1
    report, why = stored_report(object())
    assert report is None and "expected an object" in why
