"""Files in an S3-compatible bucket (``EDGEAI_STORAGE_URL=s3://bucket/prefix``).

Keys mirror the folder layout: ``<prefix>/jobs/<txid>/inputs/<role>.upload`` and
``<prefix>/jobs/<txid>/result/<filename>``. The API streams uploads from the
local file Werkzeug received them into, in parts (multipart above
``part_mb``, at most ``concurrency`` parts in memory at once); workers fetch a
job's inputs into the run's local work folder, run the job on local files, and
upload the artifacts. An S3 object appears whole when its upload completes, so
"publish" is atomic without a rename. Downloads are streamed back through the
API (``EDGEAI_S3_DOWNLOADS=stream``, the default: clients need to reach only the
API) or redirected to a presigned URL valid ``EDGEAI_S3_URL_SECONDS``
(``redirect``: the bytes bypass the API; clients must reach the store, at
``EDGEAI_S3_PUBLIC_ENDPOINT`` if it is not where the servers reach it).

Endpoint, keys and region come from boto3's own sources: ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, a profile or an instance role. Only the server processes use them:
a job's sandbox child gets a fixed environment without them.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from edgeai.config import Settings
from edgeai.storage.base import (
    Download,
    FileStore,
    StorageError,
    check_filename,
    check_role,
    check_txid,
)
from edgeai.storage.local import LocalStorage

_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING


def make_client(endpoint_url: str | None = None) -> Any:
    """An S3 client configured from the environment (see the module docstring).

    With a custom endpoint (SeaweedFS, MinIO, Ceph...) buckets are addressed by path,
    which such stores expect; on AWS, as AWS chooses.
    """
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                    s3={"addressing_style": "path" if endpoint else "auto"},
                    connect_timeout=10, read_timeout=120)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class _Body:
    """An S3 object's body as a plain readable file: ``read`` and ``close`` only, so that
    no server mistakes the socket underneath for a file it could ``sendfile``."""

    def __init__(self, body: Any):
        self._body = body

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size if size and size > 0 else None)

    def close(self) -> None:
        self._body.close()


class S3Storage(FileStore):
    """A bucket (and key prefix) shared by every host; local scratch in ``local``."""

    def __init__(self, bucket: str, prefix: str, local: LocalStorage, client: Any, *,
                 presign_client: Any = None, downloads: str = "stream",
                 url_seconds: int = 300, part_mb: int = 8, concurrency: int = 4):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.local = local
        self.client = client
        self.presign_client = presign_client or client
        self.downloads = downloads
        self.url_seconds = url_seconds
        part = part_mb * 1024 * 1024
        self.transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                                       max_concurrency=concurrency, io_chunksize=256 * 1024)

    @classmethod
    def from_settings(cls, settings: Settings, local: LocalStorage) -> S3Storage:
        """The store ``EDGEAI_STORAGE_URL`` and the ``EDGEAI_S3_*`` settings describe."""
        bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
        client = make_client()
        public = make_client(settings.s3_public_endpoint) if settings.s3_public_endpoint \
            else client
        return cls(bucket, prefix, local, client, presign_client=public,
                   downloads=settings.s3_downloads, url_seconds=settings.s3_url_seconds)

    # -- keys ----------------------------------------------------------------
    def _key(self, txid: str, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, "jobs", check_txid(txid), *parts) if p)

    def input_key(self, txid: str, role: str) -> str:
        """The key of ``role``'s upload."""
        return self._key(txid, "inputs", f"{check_role(role)}.upload")

    def result_key(self, txid: str, filename: str) -> str:
        """The key of one artifact; raises ValueError if ``filename`` is not a bare name."""
        return self._key(txid, "result", check_filename(filename))

    def describe(self) -> str:
        endpoint = self.client.meta.endpoint_url
        return f"s3://{self.bucket}/{self.prefix} at {endpoint} (downloads: {self.downloads})"

    def check(self) -> None:
        """Make sure the bucket exists (creating it if it does not and we may)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if not _missing(error):
                raise StorageError(f"EDGEAI_STORAGE_URL: bucket {self.bucket!r} refused us "
                                   f"({error}); check AWS_ACCESS_KEY_ID / "
                                   "AWS_SECRET_ACCESS_KEY and the bucket's policy") from None
        except BotoCoreError as error:
            raise StorageError(f"EDGEAI_STORAGE_URL: cannot reach the store ({error}); check "
                               "AWS_ENDPOINT_URL and the network") from None
        try:
            region = self.client.meta.region_name
            options = {} if region in (None, "us-east-1") else {
                "CreateBucketConfiguration": {"LocationConstraint": region}}
            self.client.create_bucket(Bucket=self.bucket, **options)
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"EDGEAI_STORAGE_URL: bucket {self.bucket!r} does not exist and "
                               f"could not be created ({error}); create it") from None

    # -- the API's side --------------------------------------------------------
    def new_incoming_file(self) -> IO[bytes]:
        return self.local.new_incoming_file()

    def store_upload(self, txid: str, role: str, stream: IO[bytes]) -> int:
        """Upload ``stream`` from its start, in parts; return its size.

        Uploads go from a file on disk, which boto3 reads one part at a time (handed
        an open stream, it would read every part ahead into memory): the file
        Werkzeug spooled the upload into, or else a local copy made in chunks.
        """
        key = self.input_key(txid, role)
        name = getattr(stream, "name", None)
        if isinstance(name, str) and os.path.isfile(name):
            stream.flush()
            self.client.upload_file(name, self.bucket, key, Config=self.transfer)
            return os.path.getsize(name)
        with self.local.new_incoming_file() as copy:
            stream.seek(0)
            shutil.copyfileobj(stream, copy, 1024 * 1024)
            copy.flush()
            self.client.upload_file(copy.name, self.bucket, key, Config=self.transfer)
            return copy.tell()

    def open_download(self, txid: str, filename: str) -> Download | None:
        key = self.result_key(txid, filename)
        try:
            if self.downloads == "redirect":
                self.client.head_object(Bucket=self.bucket, Key=key)
                return Download(url=self.presign_client.generate_presigned_url(
                    "get_object", ExpiresIn=self.url_seconds, Params={
                        "Bucket": self.bucket, "Key": key,
                        "ResponseContentType": "application/octet-stream",
                        "ResponseContentDisposition": f'attachment; filename="{filename}"'}))
            found = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _missing(error):
                return None
            raise
        return Download(source=_Body(found["Body"]), size=int(found["ContentLength"]))

    # -- the worker's side -----------------------------------------------------
    def fetch_inputs(self, txid: str, roles: Iterable[str], scratch: Path) -> dict[str, Path]:
        """Download the inputs that exist into ``scratch/inputs`` (ranged, to disk)."""
        stored = set(self._keys(self._key(txid, "inputs") + "/"))
        inputs = {}
        for role in roles:
            key = self.input_key(txid, role)
            if key in stored:
                target = Path(scratch) / "inputs" / f"{role}.upload"
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.client.download_file(self.bucket, key, str(target), Config=self.transfer)
                inputs[role] = target
        return inputs

    def work_dir(self, txid: str, run: str = "") -> Path:
        return self.local.work_dir(txid, run)

    def publish(self, txid: str, produced: Path, filename: str) -> None:
        """Upload a finished artifact; it appears only once complete."""
        self.client.upload_file(str(produced), self.bucket, self.result_key(txid, filename),
                                Config=self.transfer)
        return None

    # -- removal -----------------------------------------------------------------
    def _keys(self, prefix: str) -> Iterable[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for entry in page.get("Contents") or ():
                yield entry["Key"]

    def _delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in [*keys]:
            batch.append(key)
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        self.client.delete_objects(Bucket=self.bucket, Delete={
            "Objects": [{"Key": key} for key in keys], "Quiet": True})

    def remove_artifacts(self, txid: str, filenames: Iterable[str]) -> None:
        self._delete(self.result_key(txid, name) for name in filenames)

    def remove_work(self, txid: str, run: str = "") -> None:
        self.local.remove_work(txid, run)
        # The run's folder was the only local trace; drop the emptied txid folder too.
        try:
            self.local.transaction_dir(txid).rmdir()
        except OSError:
            pass

    def remove_inputs(self, txid: str) -> None:
        self._delete(self._keys(self._key(txid, "inputs") + "/"))

    def remove_results(self, txid: str) -> None:
        for part in ("result", "inputs"):
            self._delete(self._keys(self._key(txid, part) + "/"))

    def remove_transaction(self, txid: str) -> None:
        self._delete(self._keys(self._key(txid) + "/"))
        self.local.remove_transaction(txid)

    def remove_leftovers(self) -> list[str]:
        """The local scratch only (runs' folders with the inputs they fetched, uploads
        being received): the bucket's objects belong to rows, which expire as usual."""
        return self.local.remove_leftovers()
