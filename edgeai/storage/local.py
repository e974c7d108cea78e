"""Files on disk: one folder per transaction under ``EDGEAI_DATA_DIR/jobs``.

Layout of ``jobs/<txid>/``::

    inputs/<role>.upload   the client's files, stored under server-made names
    staging/               what a finished job produced, checked, before publishing
    result/<filename>      the artifact(s), renamed into place once complete

A running job never sees any of this: the sandbox links its inputs into the
child's own slot (``sandbox/slots/``) and moves the outputs back into ``staging``.

Client file names never reach a path: the txid (a uuid the server made, checked
by :func:`transaction_dir`) maps to the folder, and roles are fixed words.
"""
from __future__ import annotations

import os
import secrets
import shutil
import string
import tempfile
import uuid
from pathlib import Path
from typing import IO

CHUNK = 1024 * 1024


class Storage:
    """Paths and file operations for transactions; stateless apart from the root."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir).resolve()
        self.jobs = self.root / "jobs"
        self.incoming = self.root / "incoming"
        for path in (self.jobs, self.incoming):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Traverse-only: the sandbox's slots live below (see edgeai.sandbox).
        os.chmod(self.root, 0o711)

    def transaction_dir(self, txid: str) -> Path:
        """Return the folder of ``txid``; raises ValueError unless it is a uuid."""
        canonical = str(uuid.UUID(txid))
        if canonical != txid:
            raise ValueError("txid is not in canonical uuid form")
        return self.jobs / canonical

    def input_path(self, txid: str, role: str) -> Path:
        """Where the upload for ``role`` (a fixed word such as ``weights``) lives."""
        return self.transaction_dir(txid) / "inputs" / f"{role}.upload"

    def work_dir(self, txid: str) -> Path:
        """The server's staging folder for one run of ``txid`` (created empty)."""
        path = self.transaction_dir(txid) / "staging"
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, mode=0o700)
        return path

    def result_dir(self, txid: str) -> Path:
        """The folder that holds finished artifacts of ``txid``."""
        return self.transaction_dir(txid) / "result"

    def result_path(self, txid: str, filename: str) -> Path:
        """Path of one artifact; raises ValueError if ``filename`` is not a bare name."""
        if not filename or Path(filename).name != filename or filename.startswith("."):
            raise ValueError(f"not a bare file name: {filename!r}")
        return self.result_dir(txid) / filename

    def new_incoming_file(self) -> IO[bytes]:
        """A temporary file on the data volume for Werkzeug to stream an upload into.

        Being on the same file system lets :meth:`store_upload` link it into
        place instead of copying it.
        """
        return tempfile.NamedTemporaryFile(dir=self.incoming, prefix="upload-", delete=True)

    def store_upload(self, txid: str, role: str, stream: IO[bytes]) -> int:
        """Put an uploaded stream at :meth:`input_path`; return its size in bytes.

        A stream Werkzeug spooled into :meth:`new_incoming_file` is hard-linked
        (no copy); anything else is copied in chunks, never read whole.
        """
        dest = self.input_path(txid, role)
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = getattr(stream, "name", None)
        if isinstance(name, str) and Path(name).parent == self.incoming and os.path.exists(name):
            stream.flush()
            os.link(name, dest)
        else:
            stream.seek(0)
            with open(dest, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
        return dest.stat().st_size

    def publish(self, txid: str, produced: Path, filename: str) -> Path:
        """Move a finished artifact into the result folder atomically.

        The bytes are synced before the rename, so a reader can never see a
        half-written model under the final name.
        """
        final = self.result_path(txid, filename)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = final.with_name(f".{filename}.partial")
        shutil.copyfile(produced, staging) if produced.stat().st_dev != final.parent.stat().st_dev \
            else os.replace(produced, staging)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def remove_work(self, txid: str) -> None:
        """Delete the staging folder of ``txid`` (after the job ends)."""
        shutil.rmtree(self.transaction_dir(txid) / "staging", ignore_errors=True)

    def remove_inputs(self, txid: str) -> None:
        """Delete the uploads of ``txid`` once its job has ended."""
        shutil.rmtree(self.transaction_dir(txid) / "inputs", ignore_errors=True)

    def remove_results(self, txid: str) -> None:
        """Delete artifacts and inputs of ``txid`` (retention expiry)."""
        base = self.transaction_dir(txid)
        for part in ("result", "inputs"):
            shutil.rmtree(base / part, ignore_errors=True)

    def remove_transaction(self, txid: str) -> None:
        """Delete everything stored for ``txid`` (a submission that never got queued)."""
        self.remove_work(txid)
        shutil.rmtree(self.transaction_dir(txid), ignore_errors=True)


_ALPHABET = string.ascii_lowercase + string.digits + "_"


def artifact_stem() -> str:
    """A name like the guide's ``tmp7d8tkpfs``: ``tmp`` and 8 random characters."""
    return "tmp" + "".join(secrets.choice(_ALPHABET) for _ in range(8))
