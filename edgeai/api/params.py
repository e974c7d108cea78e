"""Reading a call's query parameters and form files against its declaration.

A submit call's parameters and files are declared once, by its engine
(:class:`edgeai.pruning.spec.EngineSpec`); status and download declare theirs in
:mod:`edgeai.api.transactions`. Anything a call does not declare is refused with
400, naming it, listing what is accepted and suggesting the closest name: a
request that silently ignored ``omited=dense`` would prune the layer the user
meant to keep. Every check runs before anything is stored, and every message
says what is allowed. Functions raise :class:`edgeai.errors.BadRequest`.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import IO, Any

from werkzeug.datastructures import FileStorage

from edgeai.errors import BadRequest
from edgeai.pruning.spec import FileRole, Param, ParameterError


def refuse_unknown(given: Iterable[str], accepted: list[str], what: str,
                   primary: Mapping[str, str] | None = None) -> None:
    """Raise BadRequest for any name in ``given`` that is not in ``accepted``.

    ``what`` is ``"parameter"`` (query) or ``"form field"``; ``primary`` maps an
    alias to the spelling a suggestion should name (the guide's).
    """
    unknown = [name for name in dict.fromkeys(given) if name not in accepted]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name.lower(), accepted, n=1, cutoff=0.6)
        hint = f"unknown {what} {name[:60]!r}"
        if close:
            hint += f"; did you mean {(primary or {}).get(close[0], close[0])!r}?"
        hints.append(hint)
    raise BadRequest(f"{'; '.join(hints)} This call accepts the {what}s: "
                     f"{', '.join(accepted) or 'none'}.")


def accepted_parameters(params: tuple[Param, ...]) -> list[str]:
    """Every query parameter name a call accepts, aliases included."""
    return [name for param in params for name in (param.name, *param.aliases)]


def _given(param: Param, args: Mapping[str, str]) -> str | None:
    """The raw value of ``param`` under any of its spellings (empty counts as absent)."""
    spellings = (param.name, *param.aliases)
    given = {name: args[name] for name in spellings if args.get(name) not in (None, "")}
    if len(set(given.values())) > 1:
        others = ", ".join(param.aliases)
        raise BadRequest(f"Send {param.name} in one parameter: {param.name} (or its aliases "
                         f"{others}); got {', '.join(sorted(given))} with different values.")
    if given:
        return next(iter(given.values()))
    return args.get(param.name)


def read_params(params: tuple[Param, ...], args: Mapping[str, str], files: set[str],
                check: Callable[[dict[str, Any], set[str]], None]) -> dict[str, Any]:
    """A call's parameters, parsed, keyed as the queue stores them; ``check`` sees them
    all at once with the names of the files given."""
    primary = {alias: param.name for param in params for alias in param.aliases}
    refuse_unknown(args.keys(), accepted_parameters(params), "parameter", primary)
    values = {}
    try:
        for param in params:
            values[param.key] = param.parse(_given(param, args))
        check(values, files)
    except ParameterError as error:
        raise BadRequest(str(error)) from None
    return values


def client_file_name(upload: FileStorage) -> str:
    """The bare name the client gave a file (kept as data, never used as a path)."""
    raw = upload.filename or ""
    # Strip any directory part a client sends, Windows or POSIX, and control
    # characters (a NUL has no business in a name, even one kept only as text).
    name = PurePosixPath(PureWindowsPath(raw).name).name
    return "".join(ch for ch in name if ch.isprintable())[:255]


def check_file(files: Mapping[str, FileStorage], field: str, extensions: tuple[str, ...],
               required: bool = True) -> FileStorage | None:
    """Return the upload in form field ``field`` after checking it is present,
    has one of ``extensions`` and is not empty."""
    upload = files.get(field)
    allowed = ", ".join(extensions)
    if upload is None or not upload.filename:
        if required:
            raise BadRequest(f"The form file '{field}' is required ({allowed}).")
        return None
    name = client_file_name(upload)
    suffix = PurePosixPath(name.lower()).suffix
    if suffix not in extensions:
        raise BadRequest(f"'{field}' must be a {allowed} file; got {name[:100]!r}.")
    stream = upload.stream
    position = stream.tell()
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(position)
    if size == 0:
        raise BadRequest(f"'{field}' ({name[:100]!r}) is empty.")
    return upload


def read_files(roles: tuple[FileRole, ...], files: Mapping[str, FileStorage],
               form: Mapping[str, str]) -> dict[str, FileStorage]:
    """A call's uploads by role, each checked; unknown fields refused."""
    refuse_unknown([*files.keys(), *form.keys()], [role.name for role in roles],
                   "form field")
    uploads = {}
    for role in roles:
        upload = check_file(files, role.name, role.extensions, role.required)
        if upload is not None:
            uploads[role.name] = upload
    return uploads


def inspect_uploads(inspect: Callable[[dict[str, Any], Mapping[str, IO[bytes]]], None],
                    values: dict[str, Any], uploads: Mapping[str, FileStorage]) -> None:
    """Let the engine look inside the uploads (its ``EngineSpec.inspect``), which may fill
    ``values``; each stream is rewound for storing. Raises BadRequest."""
    streams = {role: upload.stream for role, upload in uploads.items()}
    try:
        inspect(values, streams)
    except ParameterError as error:
        raise BadRequest(str(error)) from None
    finally:
        for stream in streams.values():
            stream.seek(0)
