"""Storage: txids map to folders the server made; artifacts appear whole or not at all."""
from __future__ import annotations

import io
import uuid

import pytest

from edgeai.storage import Storage, artifact_stem


def test_only_canonical_uuids_map_to_folders(tmp_path):
    storage = Storage(tmp_path)
    txid = str(uuid.uuid4())
    assert storage.transaction_dir(txid).parent == storage.jobs
    for bad in ("../x", txid.upper(), "", "/etc/passwd", txid + "/.."):
        with pytest.raises(ValueError):
            storage.transaction_dir(bad)


def test_result_names_must_be_bare(tmp_path):
    storage = Storage(tmp_path)
    txid = str(uuid.uuid4())
    for bad in ("../escape.h5", "a/b.h5", ".hidden", ""):
        with pytest.raises(ValueError):
            storage.result_path(txid, bad)


def test_publish_renames_complete_file_and_leaves_no_partial(tmp_path):
    storage = Storage(tmp_path)
    txid = str(uuid.uuid4())
    produced = storage.work_dir(txid) / "tmpabc.h5"
    produced.write_bytes(b"x" * 100_000)
    final = storage.publish(txid, produced, "tmpabc.h5")
    assert final.read_bytes() == b"x" * 100_000
    assert [p.name for p in final.parent.iterdir()] == ["tmpabc.h5"]


def test_store_upload_copies_foreign_streams_in_chunks(tmp_path):
    storage = Storage(tmp_path)
    txid = str(uuid.uuid4())
    size = storage.store_upload(txid, "model", io.BytesIO(b"abc" * 1000))
    assert size == 3000
    assert storage.input_path(txid, "model").read_bytes() == b"abc" * 1000


def test_artifact_stem_looks_like_the_guides():
    stem = artifact_stem()
    assert stem.startswith("tmp") and len(stem) == 11
