"""Storage: txids map to folders the server made; artifacts appear whole or not at all."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

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


HOLDER = """
import sys, time, uuid
from pathlib import Path
from edgeai.storage import LocalStorage
storage = LocalStorage(Path(sys.argv[1]))
staging = storage.work_dir(sys.argv[2], "lease0123")
(staging / "fetched" / "inputs").mkdir(parents=True)
(staging / "fetched" / "inputs" / "weights.upload").write_bytes(b"a client's model")
upload = storage.new_incoming_file()
upload.write(b"half an upload")
upload.flush()
print(staging, upload.name, flush=True)
time.sleep(600)
"""


def test_leftovers_of_a_killed_process_go_and_a_live_ones_stay(tmp_path):
    """A process holds a run's staging folder (with a fetched copy of an upload) and an
    upload it is receiving; while it lives, a sweep leaves both; once it is killed with
    SIGKILL, the next sweep removes both, and nothing else."""
    storage = Storage(tmp_path)
    txid = str(uuid.uuid4())
    storage.store_upload(txid, "weights", io.BytesIO(b"stored input"))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), txid],
                              stdout=subprocess.PIPE, text=True)
    try:
        staging, upload = map(Path, holder.stdout.readline().split())
        assert storage.remove_leftovers() == []
        assert (staging / "fetched" / "inputs" / "weights.upload").exists() and upload.exists()
    finally:
        holder.kill()
        holder.wait()
    assert staging.exists() and upload.exists()  # what SIGKILL leaves
    assert sorted(storage.remove_leftovers()) == sorted([str(staging), str(upload)])
    assert not staging.exists() and not upload.exists()
    assert storage.input_path(txid, "weights").read_bytes() == b"stored input"
    assert storage.remove_leftovers() == []


def test_a_runs_own_folder_is_live_to_another_instance_in_the_same_process(tmp_path):
    mine, other = Storage(tmp_path), Storage(tmp_path)
    txid = str(uuid.uuid4())
    staging = mine.work_dir(txid, "abc")
    (staging / "out").mkdir()
    with mine.new_incoming_file() as upload:
        assert other.remove_leftovers() == [] and staging.exists()
        assert Path(upload.name).exists()
    mine.remove_work(txid, "abc")
    assert not staging.exists()
    assert other.remove_leftovers() == []  # its emptied transaction folder is young


def test_empty_transaction_folders_and_the_quarantine_are_swept(tmp_path):
    storage = Storage(tmp_path)
    old, young = str(uuid.uuid4()), str(uuid.uuid4())
    for txid in (old, young):
        storage.transaction_dir(txid).mkdir()
    os.utime(storage.transaction_dir(old), (time.time() - 3600, time.time() - 3600))
    stuck = storage.quarantine / "staging-x-20260101T000000-abcd"
    (stuck / "deep").mkdir(parents=True)
    assert sorted(storage.remove_leftovers()) == sorted(
        [str(storage.transaction_dir(old)), str(stuck)])
    assert storage.transaction_dir(young).exists()  # a submission may be filling it
