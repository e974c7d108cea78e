"""The channel's reader against hostile frames: what a job whose code runs can write on
its descriptor 3 once it has the pipe to itself.

Each case writes raw bytes into a real pipe, read by the server's real
:class:`edgeai.sandbox.channel.ChannelReader` into a real staging folder, and checks
what the server kept: nothing outside the staging folder, no name of the job's
choosing, and a reason for every refusal.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest

from edgeai.sandbox.channel import (
    MAX_FILES,
    MAX_MESSAGE_BYTES,
    ChannelReader,
    ChannelWriter,
)

FRAME = struct.Struct(">cQ")


def message(body: dict | bytes, kind: bytes = b"J") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return FRAME.pack(kind, len(data)) + data


def announce(key: str, suffix: str, content: bytes) -> bytes:
    return (message({"type": "file", "key": key, "suffix": suffix})
            + FRAME.pack(b"F", len(content)) + content)


READY = message({"type": "ready", "confinement": {"layers": {}}})
RESULT = message({"type": "result", "ok": True, "message": "m", "report": {}})


def read(tmp_path: Path, stream: bytes, budget: int = 1 << 20):
    """Feed ``stream`` to a reader (from a thread: a pipe holds 64 KiB); return what it
    received and the staging folder's names."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    staging_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    read_end, write_end = os.pipe()
    reader = ChannelReader(read_end, staging_fd, "tmpserver0", budget)

    def feed() -> None:
        try:
            view = memoryview(stream)
            while view:
                view = view[os.write(write_end, view):]
        except BrokenPipeError:
            pass
        finally:
            os.close(write_end)

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert reader.wait(30)
    os.close(read_end)  # the reader stopped early: the feeder gets EPIPE and ends
    feeder.join(30)
    os.close(staging_fd)
    return reader, sorted(p.name for p in staging.iterdir())


def test_a_well_behaved_child_is_read_whole(tmp_path):
    """The writer's own frames: ready, progress, two files, the result."""
    read_end, write_end = os.pipe()
    source = tmp_path / "model.h5"
    source.write_bytes(os.urandom(300_000))
    staging = tmp_path / "staging"
    staging.mkdir()
    staging_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    reader = ChannelReader(read_end, staging_fd, "tmpserver0", 1 << 20)
    writer = ChannelWriter(write_end)
    writer.send({"type": "ready", "confinement": {"layers": {"view": True}}})
    writer.send_progress("pruning", 0.5)
    writer.send_file("model", ".h5", str(source))
    writer.send_file("onnx", ".onnx", str(source))
    writer.send({"type": "result", "ok": True, "message": "done", "report": {}})
    os.close(write_end)
    assert reader.wait(30)
    received = reader.received
    assert received.error is None and received.confinement == {"layers": {"view": True}}
    assert reader.progress() == ("pruning", 0.5)
    assert received.files == {"model": "tmpserver0.h5", "onnx": "tmpserver0.onnx"}
    assert (staging / "tmpserver0.h5").read_bytes() == source.read_bytes()
    assert received.result["message"] == "done"
    os.close(read_end)
    os.close(staging_fd)


HOSTILE = {
    "data before any message": (FRAME.pack(b"F", 4) + b"data",
                                "sent data where a message was expected"),
    "an unknown frame kind": (FRAME.pack(b"X", 1) + b"x",
                              "sent data where a message was expected"),
    "a message too large (not even read)": (FRAME.pack(b"J", MAX_MESSAGE_BYTES + 1),
                                            "sent a message of"),
    "not JSON": (message(b"\xff\xfe not json"), "sent a message that is not JSON"),
    "JSON nested past the parser": (message(b"[" * 100_000), "not JSON"),
    "not an object": (message(b'["file", "model"]'), "a message of an unknown type"),
    "an unknown type": (message({"type": "exfiltrate"}), "a message of an unknown type"),
    "a message after the result": (READY + RESULT + message({"type": "result", "ok": False}),
                                   "kept sending after its result"),
    "a file after the result": (READY + RESULT + announce("model", ".h5", b"x"),
                                "kept sending after its result"),
    "a key that is a path": (announce("../../edgeai.sqlite3", ".h5", b"x"),
                             "a key that is not allowed"),
    "an empty key": (announce("", ".h5", b"x"), "a key that is not allowed"),
    "a key too long": (announce("k" * 33, ".h5", b"x"), "a key that is not allowed"),
    "a suffix that climbs": (announce("model", "/../../../../etc/passwd", b"x"),
                             "a suffix that is not allowed"),
    "a suffix with dots only": (announce("model", "..", b"x"), "a suffix that is not allowed"),
    "a suffix with a slash": (announce("model", ".h5/x", b"x"), "a suffix that is not allowed"),
    "a suffix with a NUL": (announce("model", ".h5\x00", b"x"), "a suffix that is not allowed"),
    "a suffix too long": (announce("model", "." + "h" * 40, b"x"), "a suffix that is not allowed"),
    "a suffix not a string": (message({"type": "file", "key": "model", "suffix": ["a"]}),
                              "a suffix that is not allowed"),
    "the same key twice": (announce("model", ".h5", b"x") + announce("model", ".keras", b"y"),
                           "sent file 'model' twice"),
    "more files than allowed": (b"".join(announce(f"k{i}", f".f{i}", b"x")
                                         for i in range(MAX_FILES + 1)), "more than 16 files"),
    "files over the disk's bytes": (announce("model", ".h5", b"x" * 600_000)
                                    + announce("onnx", ".onnx", b"x" * 600_000),
                                    "sent files of more than 1 MB"),
    "an announced file without its data": (message({"type": "file", "key": "model",
                                                    "suffix": ".h5"}) + RESULT,
                                           "announced file 'model' but sent no data"),
    "a file cut short": (message({"type": "file", "key": "model", "suffix": ".h5"})
                         + FRAME.pack(b"F", 1000) + b"x" * 10, "ended early"),
    "a message of five million values (16 MB)": (message(b"[" + b"[]," * 4_999_999 + b"[]]"),
                                                 "a message of more than 400000 values"),
    "a progress report too large": (FRAME.pack(b"P", 10_000) + b"x" * 10_000,
                                    "sent a progress report of 10000 bytes"),
}


@pytest.mark.parametrize("trick", list(HOSTILE))
def test_hostile_frames_end_the_reading_with_a_reason(tmp_path, trick):
    stream, reason = HOSTILE[trick]
    reader, names = read(tmp_path, stream)
    assert reader.received.error is not None and reason in reader.received.error, \
        reader.received.error
    # Whatever was written went under the server's stem, in the staging folder only.
    assert all(name.startswith("tmpserver0.") or name.startswith("tmpserver0_") for name in
               names), names
    assert not (tmp_path / "edgeai.sqlite3").exists()


def test_a_progress_flood_costs_no_parsing_and_keeps_the_latest(tmp_path):
    """100,000 progress frames (most of them garbage): the reader keeps the last bytes
    only, and parses them when asked."""
    frames = b"".join(message(b"garbage" * 10, b"P") for _ in range(100_000))
    frames += message({"phase": "saving", "progress": 0.9}, b"P")
    reader, _ = read(tmp_path, READY + frames + RESULT)
    assert reader.received.error is None
    assert reader.progress() == ("saving", 0.9)


def test_a_stream_that_stops_mid_frame_is_not_an_error_but_has_no_result(tmp_path):
    reader, _ = read(tmp_path, READY + FRAME.pack(b"J", 100) + b'{"type": ')
    assert reader.received.error is None and reader.received.result is None
    assert reader.received.confinement == {"layers": {}}


def test_a_second_ready_after_the_first_is_refused(tmp_path):
    """The ready report is read once, before any job code runs; a later one (the job's)
    neither replaces it nor passes."""
    forged = message({"type": "ready", "confinement": {"layers": {"view": "forged"}}})
    reader, _ = read(tmp_path, READY + forged)
    assert reader.received.confinement == {"layers": {}}
    assert "a message of an unknown type" in reader.received.error
