"""S3Storage on a real SeaweedFS: multipart uploads that never hold a file whole, inputs
fetched to local files, atomic artifacts, streamed or presigned downloads, removal."""
from __future__ import annotations

import io
import os
import tracemalloc
import uuid

import pytest
import requests

from edgeai.config import load_settings
from edgeai.storage import LocalStorage, StorageError, open_storage
from edgeai.storage.s3 import S3Storage
from tests.scaleout.conftest import BUCKET

MB = 1024 * 1024


def keys(storage, txid):
    return sorted(k.rsplit(f"{txid}/", 1)[1] for k in storage._keys(storage._key(txid) + "/"))


def test_large_upload_goes_in_parts_without_holding_the_file(s3_storage, tmp_path):
    txid = str(uuid.uuid4())
    upload = tmp_path / "upload"
    block = os.urandom(MB)
    with open(upload, "wb") as out:
        for _ in range(40):
            out.write(block)
    with open(upload, "rb") as stream:
        stream.seek(0, os.SEEK_END)  # where Werkzeug leaves a file it has just written
        tracemalloc.start()
        try:
            size = s3_storage.store_upload(txid, "weights", stream)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert size == 40 * MB
    assert peak < 20 * MB, f"{peak / MB:.1f} MB held for a 40 MB upload"
    head = s3_storage.client.head_object(Bucket=BUCKET, Key=s3_storage.input_key(txid, "weights"))
    assert head["ContentLength"] == 40 * MB
    assert head["ETag"].strip('"').endswith("-8")  # 8 parts of 5 MB: a multipart upload

    fetched = s3_storage.fetch_inputs(txid, ["weights", "dataset"], tmp_path / "scratch")
    assert list(fetched) == ["weights"]  # no dataset was stored
    assert fetched["weights"].stat().st_size == 40 * MB
    with open(fetched["weights"], "rb") as got:
        assert got.read(MB) == block


def test_artifacts_publish_stream_back_and_expire(s3_storage, tmp_path):
    txid = str(uuid.uuid4())
    s3_storage.store_upload(txid, "model", io.BytesIO(b"h5" * 1000))
    work = s3_storage.work_dir(txid, "abc123")
    (work / "tmpabcdefgh.h5").write_bytes(b"pruned" * 5000)
    (work / "tmpabcdefgh.state_dict.pt").write_bytes(b"weights")
    s3_storage.publish(txid, work / "tmpabcdefgh.h5", "tmpabcdefgh.h5")
    s3_storage.publish(txid, work / "tmpabcdefgh.state_dict.pt", "tmpabcdefgh.state_dict.pt")
    s3_storage.remove_work(txid, "abc123")
    assert not s3_storage.local.transaction_dir(txid).exists()  # no local trace is left

    download = s3_storage.open_download(txid, "tmpabcdefgh.h5")
    assert download.size == 30000 and download.url is None
    assert not hasattr(download.source, "fileno")  # never mistaken for a local file
    assert download.source.read() == b"pruned" * 5000
    download.source.close()
    assert s3_storage.open_download(txid, "tmpmissing0.h5") is None
    with pytest.raises(ValueError):
        s3_storage.open_download(txid, "../escape.h5")

    s3_storage.remove_artifacts(txid, ["tmpabcdefgh.state_dict.pt"])
    assert keys(s3_storage, txid) == ["inputs/model.upload", "result/tmpabcdefgh.h5"]
    s3_storage.remove_inputs(txid)
    assert keys(s3_storage, txid) == ["result/tmpabcdefgh.h5"]
    s3_storage.remove_results(txid)
    assert keys(s3_storage, txid) == []


def test_redirect_mode_hands_out_a_presigned_url(s3_storage):
    txid = str(uuid.uuid4())
    storage = S3Storage(BUCKET, s3_storage.prefix, s3_storage.local, s3_storage.client,
                        downloads="redirect", url_seconds=60)
    storage.store_upload(txid, "model", io.BytesIO(b"x"))
    produced = storage.work_dir(txid) / "tmp12345678.h5"
    produced.write_bytes(b"the model")
    storage.publish(txid, produced, "tmp12345678.h5")
    download = storage.open_download(txid, "tmp12345678.h5")
    assert download.source is None and "X-Amz-Signature=" in download.url
    response = requests.get(download.url, timeout=30)  # no credentials: the URL is the key
    assert response.content == b"the model"
    assert 'filename="tmp12345678.h5"' in response.headers["Content-Disposition"]
    tampered = download.url.replace("tmp12345678.h5", "tmp12345679.h5", 1)
    assert requests.get(tampered, timeout=30).status_code == 403
    assert storage.open_download(txid, "tmp00000000.h5") is None
    storage.remove_transaction(txid)
    assert keys(storage, txid) == []


def test_settings_open_the_bucket_from_the_usual_aws_variables(seaweed, tmp_path,
                                                               monkeypatch):
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    bucket = "edgeai-new-" + uuid.uuid4().hex[:8]
    settings = load_settings({"EDGEAI_DATA_DIR": str(tmp_path / "var"),
                              "EDGEAI_STORAGE_URL": f"s3://{bucket}/some/prefix/"})
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage) and isinstance(storage.local, LocalStorage)
    assert (storage.bucket, storage.prefix) == (bucket, "some/prefix")
    storage.check()  # creates the missing bucket
    storage.client.head_bucket(Bucket=bucket)
    assert seaweed.secret_key not in storage.describe()
    assert storage.input_key(str(uuid.UUID(int=1)), "weights") == (
        "some/prefix/jobs/00000000-0000-0000-0000-000000000001/inputs/weights.upload")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY"):
        open_storage(settings).check()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL"):
        open_storage(settings).check()


def test_the_sandbox_child_sees_neither_the_store_keys_nor_the_database(tmp_path, monkeypatch):
    from edgeai.runner import sandbox_for

    secrets = {"AWS_SECRET_ACCESS_KEY": "s3-secret-value", "AWS_ACCESS_KEY_ID": "s3-key-id",
               "AWS_SESSION_TOKEN": "s3-session", "AWS_ENDPOINT_URL": "http://store:8333",
               "EDGEAI_DATABASE_URL": "postgresql+psycopg://edgeai:db-password@db/edgeai",
               "PGPASSWORD": "db-password"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    settings = load_settings({"EDGEAI_DATA_DIR": str(tmp_path / "var"),
                              "EDGEAI_DATABASE_URL": secrets["EDGEAI_DATABASE_URL"],
                              "EDGEAI_STORAGE_URL": "s3://bucket/prefix"})
    env = sandbox_for(settings).child_env()
    assert not [name for name in env if name.startswith(("AWS_", "EDGEAI_", "PG"))]
    leaked = [value for value in secrets.values() if any(value in v for v in env.values())]
    assert leaked == []
