"""Report tokens and the signing secret, without an app."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgeai.config import Settings
from edgeai.report_page.links import SECRET_FILE, ReportLinks, read_or_create_secret


def test_racing_processes_end_with_one_secret(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: read_or_create_secret(tmp_path), range(32)))
    assert len(secrets) == 1 and len(secrets.pop()) >= 32
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temp files left
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600


def test_a_truncated_secret_file_is_refused(tmp_path):
    (tmp_path / SECRET_FILE).write_text("short")
    with pytest.raises(OSError, match="no usable secret"):
        read_or_create_secret(tmp_path)


@pytest.mark.parametrize("payload", [
    "just-a-string", ["only-one"], [str(uuid.uuid4()), 7],
    [str(uuid.uuid4()).upper(), "edgeai-1"], ["../../etc/passwd", "edgeai-1"],
])
def test_validly_signed_but_malformed_payloads_open_nothing(tmp_path, payload):
    links = ReportLinks(Settings(data_dir=tmp_path))
    assert links.open(links.serializer.dumps(payload)) is None


def test_round_trip_and_lifetime(tmp_path):
    links = ReportLinks(Settings(data_dir=tmp_path, report_link_hours=2.0))
    txid = str(uuid.uuid4())
    assert links.open(links.token_for(txid, "edgeai-1")) == (txid, "edgeai-1")
    assert links.max_age == 7200
