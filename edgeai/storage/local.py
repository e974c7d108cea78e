"""Files on disk: one folder per transaction under ``EDGEAI_DATA_DIR/jobs`` (the default).

Layout of ``jobs/<txid>/``::

    inputs/<role>.upload   the client's files, stored under server-made names
    staging[-<run>]/       what a run produced, checked, before publishing
    result/<filename>      the artifact(s), renamed into place once complete

A running job never sees any of this: the sandbox links its inputs into the
child's own slot (``sandbox/slots/``) and moves the outputs back into ``staging``.

Client file names never reach a path: the txid (a uuid the server made, checked
by :func:`transaction_dir`) maps to the folder, and roles are fixed words.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from edgeai.storage.base import (
    Download,
    FileStore,
    check_filename,
    check_role,
    check_txid,
)

CHUNK = 1024 * 1024


class LocalStorage(FileStore):
    """Paths and file operations for transactions; stateless apart from the root."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir).resolve()
        self.jobs = self.root / "jobs"
        self.incoming = self.root / "incoming"
        for path in (self.jobs, self.incoming):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Traverse-only: the sandbox's slots live below (see edgeai.sandbox).
        os.chmod(self.root, 0o711)

    def describe(self) -> str:
        return f"folder {self.jobs}"

    def check(self) -> None:
        """Nothing to check: the folders were made above."""

    def transaction_dir(self, txid: str) -> Path:
        """Return the folder of ``txid``; raises ValueError unless it is a uuid."""
        return self.jobs / check_txid(txid)

    def input_path(self, txid: str, role: str) -> Path:
        """Where the upload for ``role`` (a fixed word such as ``weights``) lives."""
        return self.transaction_dir(txid) / "inputs" / f"{check_role(role)}.upload"

    def work_dir(self, txid: str, run: str = "") -> Path:
        """The server's staging folder for one run of ``txid`` (created empty)."""
        path = self._staging(txid, run)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, mode=0o700)
        return path

    def _staging(self, txid: str, run: str) -> Path:
        if run and not run.isalnum():
            raise ValueError(f"not a run name: {run!r}")
        return self.transaction_dir(txid) / (f"staging-{run}" if run else "staging")

    def result_dir(self, txid: str) -> Path:
        """The folder that holds finished artifacts of ``txid``."""
        return self.transaction_dir(txid) / "result"

    def result_path(self, txid: str, filename: str) -> Path:
        """Path of one artifact; raises ValueError if ``filename`` is not a bare name."""
        return self.result_dir(txid) / check_filename(filename)

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

    def fetch_inputs(self, txid: str, roles: Iterable[str], scratch: Path) -> dict[str, Path]:
        """The inputs in place: they are local already."""
        paths = {role: self.input_path(txid, role) for role in roles}
        return {role: path for role, path in paths.items() if path.exists()}

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

    def open_download(self, txid: str, filename: str) -> Download | None:
        """The artifact's path (sent with the kernel's help), or None if it is gone."""
        path = self.result_path(txid, filename)
        return Download(source=path) if path.is_file() else None

    def remove_artifacts(self, txid: str, filenames: Iterable[str]) -> None:
        for filename in filenames:
            self.result_path(txid, filename).unlink(missing_ok=True)

    def remove_work(self, txid: str, run: str = "") -> None:
        """Delete the staging folder of one run of ``txid`` (after the run ends)."""
        shutil.rmtree(self._staging(txid, run), ignore_errors=True)

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
        shutil.rmtree(self.transaction_dir(txid), ignore_errors=True)
