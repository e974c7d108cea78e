"""``edgeai prune``: prune a model from the terminal, on a server or on this machine.

The command is a thin layer over :class:`edgeai.client.Client` (with ``--server``)
or :class:`edgeai.local.LocalJob` (without): it turns flags into the API's query
parameters and files, follows the job with a progress display, and writes the
pruned file. Exit codes: 0 done, 1 the job failed (reason on stderr), 2 usage (a
flag, file or parameter the server would refuse), 3 server unreachable or key
refused, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DESCRIPTION = """\
Prune a Keras model (MODEL: .h5, .keras, .zip), an ONNX model (MODEL: .onnx), a
PyTorch torch.export program (MODEL: .pt2) or a PyTorch state_dict (--weights with
--class-def). With --server URL (or EDGEAI_SERVER) the job runs on that edgeai server;
without, it runs here, in the same pipeline and sandbox a server uses (root or user
namespaces needed).

The API key for a server comes from EDGEAI_CLIENT_ID and EDGEAI_CLIENT_SECRET, or from
$XDG_CONFIG_HOME/edgeai/config.json (default ~/.config/edgeai/config.json):
{"client_id": "...", "client_secret": "..."}, readable by you only (chmod 600).
There is deliberately no flag for the secret: it would land in your shell history."""

EPILOG = """\
examples:
  edgeai prune mnist_base.h5 -p 0.4 -o small.h5
  edgeai prune mnist_base.h5 -p 0.4 --format tflite --round-to 8
  edgeai prune mnist_base.h5 --target macs:0.5 --server http://127.0.0.1:5000 --json
  edgeai prune net.pt2 -p 0.5 --round-to 8 --format onnx
  edgeai prune net.onnx -p 0.5 --round-to 8 --server http://127.0.0.1:5000
  edgeai prune resnet.keras --target latency:0.5 --format tflite --threads 1 --dataset d.npz
  edgeai prune --weights mnist_cnn.pth --class-def model.py --model-name Net \\
               --input-size 1,28,28 -p 0.5 --omit fc1,fc2

files: an existing file is never replaced without --overwrite: -o FILE that exists is
refused at once; the default name (and a name in -o FOLDER) takes the next free
MODEL.pruned-N.<ext> instead.

output: a progress bar on a terminal, plain lines ("[  3.1s] running  pruning  40%")
otherwise; --json prints the final status and report as JSON on stdout (progress then
goes to stderr). Ctrl-C on a terminal asks whether to cancel the job on the server;
otherwise the job is left running and its txid printed.

exit codes:
  0    done, the pruned file written
  1    the job failed (its reason on stderr)
  2    usage: a bad flag, a missing file, or a parameter the server refuses
  3    the server is unreachable, or the API key is missing, refused or unsafe
  130  interrupted (Ctrl-C)"""


def add_prune_parser(groups: Any) -> None:
    """Declare ``edgeai prune`` and its flags on the CLI's subparsers."""
    prune = groups.add_parser("prune", help="prune a model (on a server, or here)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    prune.add_argument("model", nargs="?", metavar="MODEL",
                       help="Keras or ONNX model file, or a torch.export program (.pt2)")
    how = prune.add_argument_group("how much to prune (one of)")
    how.add_argument("-p", "--percent", help="fraction of every group's channels to remove, "
                     "in [0, 1): 0.4 removes 40%%")
    how.add_argument("--target", help="keep this fraction of params, MACs or measured latency, "
                     "e.g. macs:0.5 or latency:0.5")
    how.add_argument("--plan", type=Path, help="per-group plan .json (from an analysis)")
    what = prune.add_argument_group("what to write and keep")
    what.add_argument("-o", "--output", type=Path,
                      help="file (or folder) to write; default MODEL.pruned.<ext> here (or, "
                      "when that exists, MODEL.pruned-2.<ext>, ...)")
    what.add_argument("--overwrite", action="store_true",
                      help="replace the output file if it exists (without it, an existing "
                      "-o FILE is refused before anything is sent)")
    what.add_argument("--format", help="file to produce: model (default); tflite, "
                      "tflite-int8, onnx (Keras); state_dict, pt2, onnx (PyTorch)")
    what.add_argument("--omit", help="comma-separated layer names to keep whole")
    what.add_argument("--round-to", help="every group keeps a multiple of this many channels")
    what.add_argument("--dataset", type=Path, help="data to measure, recover and fine-tune on")
    what.add_argument("--finetune-epochs", help="epochs of fine-tuning on --dataset")
    what.add_argument("--runtime", help="where to time (a latency target, the report's speed): "
                      "keras, tflite, onnxruntime (Keras); torch, onnxruntime (PyTorch); "
                      "default: the --format's runtime, else the framework's")
    what.add_argument("--threads", help="threads to time with, as your device runs the model")
    what.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="any other parameter the server accepts, e.g. measure=false, "
                           "batch_size=8, recover=false (repeatable)")
    torch_files = prune.add_argument_group("PyTorch")
    torch_files.add_argument("--weights", type=Path, help="state_dict (.pth, .pt, .safetensors)")
    torch_files.add_argument("--class-def", type=Path, help="the .py file defining the class")
    torch_files.add_argument("--model-name", help="the class to build (default Net)")
    torch_files.add_argument("--input-size", help="one input's shape, e.g. 1,28,28 (a .pt2 "
                             "carries its own)")
    where = prune.add_argument_group("where and how to report")
    where.add_argument("--server", default=os.environ.get("EDGEAI_SERVER"),
                       help="edgeai server URL (default $EDGEAI_SERVER; none: run here)")
    where.add_argument("--json", action="store_true",
                       help="print the final status and report as JSON")


class UsageError(Exception):
    """A flag combination or file the command refuses before anything is sent."""


def request_from(args: argparse.Namespace) -> tuple[str, dict[str, Path], dict[str, str]]:
    """The framework, the files by role and the query parameters the flags describe.

    Raises UsageError for a missing file, MODEL given with --weights, or a malformed
    --param.
    """
    torch = args.weights is not None or args.class_def is not None
    if torch and args.model:
        raise UsageError("give either MODEL (Keras, or a .pt2 program) or --weights and "
                         "--class-def (PyTorch), not both")
    if not torch and not args.model:
        raise UsageError("give MODEL (a Keras or ONNX file, or a .pt2 program), or --weights "
                         "and --class-def")
    files = ({"weights": args.weights, "class_def": args.class_def} if torch
             else {"model": Path(args.model)})
    files.update({role: path for role, path in (("dataset", args.dataset),
                                                ("plan", args.plan)) if path is not None})
    for role, path in files.items():
        if path is None:
            raise UsageError(f"--{role.replace('_', '-')} is required for a PyTorch model")
        if not Path(path).is_file():
            raise UsageError(f"no such file: {path}")
    raw = {"percent": args.percent, "ommitted": args.omit, "round_to": args.round_to,
           "target": args.target, "finetune_epochs": args.finetune_epochs,
           "model_name": args.model_name, "input_size": args.input_size,
           "runtime": args.runtime, "threads": args.threads}
    for item in args.param:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise UsageError(f"--param {item!r}: write NAME=VALUE, e.g. measure=false")
        raw[name.strip()] = value.strip()
    suffix = Path(args.model).suffix.lower() if args.model else ""
    program = not torch and suffix == ".pt2"
    framework = "pytorch" if torch or program else "onnx" if suffix == ".onnx" else "tensorflow"
    if args.format and is_export_format(framework, args.format):
        raw["formats"] = args.format
    return framework, files, {k: v for k, v in raw.items() if v is not None}


def is_export_format(framework: str, fmt: str) -> bool:
    """Whether ``fmt`` is a deploy format the job must be asked to make (formats=...),
    as the engine declares it; raises UsageError for a format the engine lacks."""
    from edgeai.pruning import spec_for
    from edgeai.pruning.spec import ParameterError

    spec = spec_for(framework)
    if fmt not in spec.downloads:
        raise UsageError(f"--format {fmt!r}: a {spec.name} job makes "
                         f"{', '.join(spec.downloads)}")
    try:
        spec.param("formats").parse(fmt)
    except (KeyError, ParameterError):
        return False
    return True


class RichDisplay:
    """A ``rich`` progress bar: state and phase, bar, percent, elapsed time."""

    def __init__(self, stream: IO[str]):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description:<20}"),
                                 BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                                 console=Console(file=stream))
        self.task = self.progress.add_task("submitted", total=None)
        self.progress.start()

    def __call__(self, status: dict[str, Any]) -> None:
        from rich.markup import escape

        from edgeai.client import job_state, terminal_text

        state, fraction = job_state(status), status.get("progress")
        phase = status.get("phase")
        description = f"{state} {phase}" if phase and phase != state else state
        # The server's words: no terminal controls, and no rich markup either.
        description = escape(terminal_text(description)[:60])
        if state == "done":
            self.progress.update(self.task, description=description, total=1, completed=1)
        elif isinstance(fraction, (int, float)):
            self.progress.update(self.task, description=description, total=1,
                                 completed=float(fraction))
        else:
            self.progress.update(self.task, description=description)

    def close(self) -> None:
        """Stop redrawing (before printing anything else)."""
        self.progress.stop()


class PlainDisplay:
    """Plain progress lines (:class:`edgeai.client.PlainProgress`) for a pipe or a log."""

    def __init__(self, stream: IO[str]):
        from edgeai.client import PlainProgress

        self.lines = PlainProgress(stream)

    def __call__(self, status: dict[str, Any]) -> None:
        self.lines(status)

    def close(self) -> None:
        """Nothing to stop."""


def display_for(as_json: bool) -> RichDisplay | PlainDisplay:
    """A bar on a terminal, plain lines otherwise; on stderr when stdout carries JSON."""
    stream = sys.stderr if as_json else sys.stdout
    return RichDisplay(stream) if stream.isatty() else PlainDisplay(stream)


def output_path(args: argparse.Namespace, status: Mapping[str, Any], source: Path) -> Path:
    """Where the pruned file goes: ``-o FILE``, else ``<source stem>.pruned<ext of the
    file made>`` in ``-o FOLDER`` or the current folder; when that name is taken (and
    not ``--overwrite``), the first free ``<source stem>.pruned-N<ext>``. The extension
    is the server's only if it is a plain one (letters, digits, ``-``, ``_``)."""
    if args.output is not None and not args.output.is_dir():
        return args.output
    artifacts = (status.get("report") or {}).get("artifacts") or {}
    made = artifacts.get(args.format or "model") or status.get("filename") or ""
    suffix = "".join(Path(str(made)).suffixes[-1:])
    if not re.fullmatch(r"\.[A-Za-z0-9_-]{1,16}", suffix):
        suffix = ""
    folder = args.output if args.output is not None else Path.cwd()
    name = folder / f"{source.stem}.pruned{suffix}"
    number = 2
    while not args.overwrite and os.path.lexists(name) and number < 10_000:
        name = folder / f"{source.stem}.pruned-{number}{suffix}"
        number += 1
    return name


def open_job(args: argparse.Namespace, framework: str, files: dict[str, Path],
             raw: dict[str, str]) -> Any:
    """Submit to the server, or start the run here; return the job to follow.

    Raises ClientError (KeyFileError: the key file is unsafe) or
    edgeai.errors.BadRequest.
    """
    if not args.server:
        from edgeai.local import LocalJob

        return LocalJob(framework, files, raw)
    from edgeai.client import Client

    client = Client(args.server)
    params: dict[str, Any] = {**raw, **{role: str(path) for role, path in files.items()}}
    return client.prune(**params)


def follow(job: Any, as_json: bool, on_server: bool) -> dict[str, Any]:
    """Wait for the job with a progress display; return its final status.

    Raises JobFailed, ClientError, or KeyboardInterrupt after handling Ctrl-C (asking
    whether to cancel a server's job on a terminal).
    """
    display = display_for(as_json)
    try:
        return job.wait(progress=display)
    except KeyboardInterrupt:
        display.close()
        interrupted(job, on_server)
        raise
    finally:
        display.close()


def interrupted(job: Any, on_server: bool) -> None:
    """Ctrl-C: cancel a local run; for a server's job ask on a terminal, else leave it."""
    from edgeai.client import ClientError, terminal_text

    if not on_server:
        job.cancel()
        print("edgeai: stopped", file=sys.stderr)
        return
    answer = ""
    if sys.stdin.isatty() and sys.stdout.isatty():
        try:
            answer = input("\ncancel the job on the server? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
    if answer in ("y", "yes"):
        try:
            reply = job.cancel()
            print(terminal_text(f"edgeai: {reply.get('message') or 'cancel requested'} "
                                f"({job.txid})"), file=sys.stderr)
        except ClientError as error:
            print(terminal_text(f"edgeai: could not cancel {job.txid}: {error}"),
                  file=sys.stderr)
        return
    print(terminal_text(f"edgeai: left running on the server: txid {job.txid}"),
          file=sys.stderr)


def summary(status: Mapping[str, Any], output: Path, seconds: float) -> str:
    """The lines printed after a job: what shrank by how much, the file written, and
    (from a server) the report page's link, to open or send to a colleague."""
    report = status.get("report") or {}
    parts = []
    for key, label in (("params", "params"), ("macs", "MACs"), ("file_size", "file bytes")):
        before, after = report.get(f"{key}_before"), report.get(f"{key}_after")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
            parts.append(f"{label} {before:,.0f} -> {after:,.0f} ({after / before - 1:+.0%})")
    head = f"done in {seconds:.1f} s" + (": " + ", ".join(parts) if parts else "")
    target = report.get("target") or {}
    if target.get("metric") == "latency" and target.get("detail"):
        head += f"\nlatency target {target.get('keep')}: {target['detail']}"
    link = status.get("report_url")
    from edgeai.client import terminal_text

    return terminal_text(f"{head}\nwrote {output}" + (f"\nreport: {link}" if link else ""))


def run_prune(args: argparse.Namespace) -> int:
    """Run ``edgeai prune``; return its exit code (see the module docstring)."""
    from edgeai.client import (
        AuthError,
        ClientError,
        JobFailed,
        KeyFileError,
        OutputExists,
        ServerUnreachable,
    )
    from edgeai.errors import BadRequest

    started = time.monotonic()
    job = None
    try:
        framework, files, raw = request_from(args)
        if args.output is not None and not args.output.is_dir() and not args.overwrite \
                and os.path.lexists(args.output):
            raise UsageError(f"{args.output} exists; pass --overwrite to replace it, or -o "
                             "another name")
        job = open_job(args, framework, files, raw)
        status = follow(job, args.json, bool(args.server))
        source = files.get("model") or files["weights"]
        output = job.download(output_path(args, status, source), args.format,
                              overwrite=args.overwrite)
    except (UsageError, BadRequest) as error:
        return fail(EXIT_USAGE, error)
    except OutputExists as error:  # it appeared while the job ran
        kept = f" The job is done on the server: txid {getattr(job, 'txid', '?')}." \
            if args.server else ""
        return fail(EXIT_FAILED, f"{error}{kept}")
    except (ServerUnreachable, AuthError, KeyFileError) as error:
        hint = (" (set EDGEAI_CLIENT_ID and EDGEAI_CLIENT_SECRET, or the key file: see "
                "edgeai prune --help)") if isinstance(error, AuthError) else ""
        return fail(EXIT_SERVER, f"{error}{hint}")
    except JobFailed as error:
        return fail(EXIT_FAILED, f"the job failed: {error}")
    except ClientError as error:
        return fail(EXIT_USAGE if error.status_code == 400 else EXIT_FAILED, error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if job is not None and hasattr(job, "close"):
            job.close()
    if args.json:
        print(json.dumps({**status, "output": str(output)}, indent=2))
    else:
        print(summary(status, output, time.monotonic() - started))
    return EXIT_DONE


def fail(code: int, error: object) -> int:
    """Print ``edgeai: <error>`` on stderr (the server's words made safe for a terminal:
    :func:`edgeai.client.terminal_text`); return ``code``."""
    from edgeai.client import terminal_text

    print(f"edgeai: {terminal_text(error)}", file=sys.stderr)
    return code
