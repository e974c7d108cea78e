"""``edgeai.sandbox.limits`` applied for real, each case in its own Python subprocess.

Limits are process-wide and mostly irreversible, so every test runs a short
``python -c`` program that confines itself with small limits and then tries to
break them; the test reads its exit status and output.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

SMALL = {"memory_mb": 512, "cpu_seconds": 30, "file_mb": 1, "open_files": 64, "processes": 512}


def run_confined(body: str, limits: dict | None = None, timeout: float = 120,
                 ) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter after ``set_limits(limits)``; return the result.

    ``body`` sees ``limits``, ``os``, ``resource`` and ``signal`` imported.
    """
    program = textwrap.dedent("""
        import errno, json, os, resource, signal, sys
        from edgeai.sandbox import limits
        limits.set_limits(json.loads(sys.argv[1]))
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", program, json.dumps({**SMALL, **(limits or {})})],
                          capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_huge_allocation_raises_memory_error_while_numpy_imports():
    """64 GiB is refused with MemoryError under a 512 MB limit; numpy still imports and works."""
    result = run_confined("""
        import numpy as np
        assert np.arange(1000).sum() == 499500
        try:
            bytearray(64 * 2**30)
        except MemoryError:
            print("bytearray: MemoryError")
        try:
            np.ones(64 * 2**30, dtype=np.uint8)
        except MemoryError:
            print("numpy: MemoryError")
        small = bytearray(64 * 2**20)  # well inside the limit
        print("small ok", len(small))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["bytearray: MemoryError", "numpy: MemoryError",
                                             f"small ok {64 * 2**20}"]


def test_memory_limit_is_enforced_on_data_and_address_space():
    """RLIMIT_DATA is the job's memory; RLIMIT_AS is set above it; both hard limits bind."""
    result = run_confined("""
        print(json.dumps({"data": resource.getrlimit(resource.RLIMIT_DATA),
                          "as": resource.getrlimit(resource.RLIMIT_AS)}))
    """)
    assert result.returncode == 0, result.stderr
    limits = json.loads(result.stdout)
    memory = SMALL["memory_mb"] << 20
    assert limits["data"] == [memory, memory]
    assert limits["as"][0] == limits["as"][1] >= memory


def test_writing_past_file_limit_kills_with_sigxfsz(tmp_path):
    """Writing more than ``file_mb`` kills the process with SIGXFSZ under the signal's default
    action (native code that does not ignore it, e.g. a framework's writer thread)."""
    target = tmp_path / "big.bin"
    result = run_confined(f"""
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # CPython ignores it at start-up
        with open({str(target)!r}, "wb") as out:
            out.write(b"x" * (512 * 1024))
            out.flush()
            print("half a MB ok", flush=True)
            out.write(b"x" * (2 * 2**20))
            out.flush()
        print("wrote past the limit")
    """)
    assert result.returncode == -signal.SIGXFSZ, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "half a MB ok\n"
    assert target.stat().st_size <= SMALL["file_mb"] << 20


def test_writing_past_file_limit_raises_efbig_in_python(tmp_path):
    """In Python (which ignores SIGXFSZ) the write past ``file_mb`` raises OSError(EFBIG)."""
    result = run_confined(f"""
        assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
        try:
            with open({str(tmp_path / "big.bin")!r}, "wb", buffering=0) as out:
                out.write(b"x" * 2**20)
                out.write(b"x")
        except OSError as error:
            print("errno", error.errno)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"errno {errno.EFBIG}"


def test_opening_more_than_open_files_fails(tmp_path):
    """The ``open_files``-th descriptor is refused with EMFILE."""
    result = run_confined(f"""
        handles = []
        try:
            for i in range(200):
                handles.append(open({str(tmp_path)!r} + f"/f{{i}}", "w"))
        except OSError as error:
            print(error.errno, len(handles))
    """, limits={"open_files": 32})
    assert result.returncode == 0, result.stderr
    code, opened = result.stdout.split()
    assert int(code) == errno.EMFILE
    assert 20 <= int(opened) < 32  # stdin/stdout/stderr and the interpreter's own use some


def test_cpu_limit_stops_a_busy_loop():
    """Past ``cpu_seconds`` of CPU the kernel sends SIGXCPU and the loop dies."""
    result = run_confined("""
        while True:
            pass
    """, limits={"cpu_seconds": 1}, timeout=60)
    assert result.returncode == -signal.SIGXCPU, (result.returncode, result.stderr)


def test_core_dumps_are_disabled():
    """RLIMIT_CORE is 0 soft and hard: a crash leaves no core with the job's data."""
    result = run_confined("print(json.dumps(resource.getrlimit(resource.RLIMIT_CORE)))")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [0, 0]
