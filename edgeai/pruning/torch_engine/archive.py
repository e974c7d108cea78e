"""What a ``.pt2`` archive (``torch.export.save``) holds, read with ``zipfile`` and ``json``.

No torch here: the server reads an uploaded program's input shape with this module
(to refuse a bad upload with a 400 before anything is stored), and the sandboxed
child runs the same checks again before torch sees the file.

Loading a ``.pt2`` with torch can run code from the file (see the README's section on
``.pt2`` programs): ``torch.export.load`` unpickles payloads marked ``use_pickle``
(``torch.load(weights_only=False)``), custom and opaque objects (``pickle.loads``),
legacy weight files and, when a safe load fails, the sample inputs; it evaluates
every shape expression with ``sympy.sympify``, which is ``eval``; it loads
AOTInductor packages' shared libraries; and ``ExportedProgram.module()`` ``exec``\\ s
the file's ``guards_code``. So a ``.pt2`` job is treated as code and runs only
behind every sandbox wall. The checks below are the courtesy in front of that
wall: they refuse, with a message, each of those parts that a program saved by
``torch.export.save`` from an ordinary model does not need, so a crafted file meets
an early error rather than the loader.
"""
from __future__ import annotations

import ast
import json
import math
import re
import zipfile
from dataclasses import dataclass
from typing import IO, Any

SAVE_HINT = ("save the program with torch.export.save(torch.export.export(model.eval(), "
             "(x,)), 'net.pt2')")
MAX_ENTRIES = 100_000
MAX_JSON_BYTES = 64 << 20  # a program of 450 layers writes about 1 MB of model.json
MAX_EXPRESSION_CHARS = 2000
FLOAT32 = 7  # torch._export.serde.schema.ScalarType.FLOAT
# Folders of compiled code (AOTInductor, ExecuTorch, MTIA) and of external weights: a
# program saved by torch.export.save has none of them.
FOREIGN_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
# What torch writes in a shape expression (sympy's srepr and str forms): anything
# else is refused before sympy evaluates it.
EXPRESSION_CALLS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "floor", "ceiling", "Mod", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality", "And", "Or",
    "Not", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity"})
EXPRESSION_NAMES = frozenset({"True", "False", "oo", "zoo", "nan", "S"}) | EXPRESSION_CALLS
SYMBOL_NAME = re.compile(r"^[a-z]{1,8}[0-9]{0,12}$")
EXPRESSION_KEYWORDS = frozenset({"integer", "positive", "nonnegative", "real", "finite",
                                 "negative", "nonpositive", "evaluate"})


class ArchiveError(ValueError):
    """The upload is not a ``.pt2`` program edgeai can prune; ``str()`` says why and what
    to send. ``unsafe``: it holds a part that would run code when torch loads it."""

    def __init__(self, message: str, unsafe: bool = False):
        super().__init__(message)
        self.unsafe = unsafe


@dataclass(frozen=True)
class ProgramFacts:
    """What the archive says about the program's one input."""

    input_name: str
    input_size: list[int]      # without the batch dimension
    batch: int | None          # the exported batch size; None when it is dynamic
    sample_inputs: str | None = None  # the archive entry of the example inputs (a torch.save)


def read_facts(source: str | IO[bytes]) -> ProgramFacts:
    """Check the archive at ``source`` (a path or a seekable binary stream, left where
    it was) and return its input's facts. Raises :class:`ArchiveError`."""
    position = None if isinstance(source, str) else source.tell()
    try:
        with zipfile.ZipFile(source) as archive:
            return _read(archive)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError):
        raise ArchiveError(f"not a .pt2 archive (it is not a zip file); {SAVE_HINT}.") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            RecursionError, NotImplementedError, MemoryError) as error:
        raise ArchiveError(f"not a readable .pt2 archive ({type(error).__name__}); "
                           f"{SAVE_HINT}.") from None
    finally:
        if position is not None:
            source.seek(position)  # type: ignore[union-attr]


def _read(archive: zipfile.ZipFile) -> ProgramFacts:
    names = archive.namelist()
    if len(names) > MAX_ENTRIES:
        raise ArchiveError(f"the archive has {len(names)} entries; a .pt2 program has a "
                           "few per tensor.")
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or not all("/" in name for name in names):
        if "version" in names or "serialized_exported_program.json" in names:
            raise ArchiveError("this .pt2 was written by an old torch.export.save (before "
                               "torch 2.6), whose format edgeai does not read; load it and "
                               "save it again with a current torch.", unsafe=True)
        raise ArchiveError(f"not a .pt2 archive (its files are not in one folder); "
                           f"{SAVE_HINT}.")
    root = roots.pop() + "/"
    entries = {name[len(root):]: name for name in names}
    if _text(archive, entries, "archive_format", 16) != "pt2":
        raise ArchiveError(f"not a .pt2 archive (no archive_format 'pt2'); {SAVE_HINT}.")
    if _text(archive, entries, "archive_version", 16) != "0":
        raise ArchiveError("this .pt2 archive has a version this server's torch does not "
                           "read; save it with torch 2.6 or later.")
    foreign = sorted({prefix for prefix in FOREIGN_DIRS for name in entries
                      if name.startswith(prefix)})
    if foreign:
        raise ArchiveError("this .pt2 holds compiled code or external weights "
                           f"({', '.join(foreign)}: an AOTInductor or ExecuTorch package), "
                           f"not only an exported program; {SAVE_HINT}.", unsafe=True)
    models = sorted(name for name in entries if name.startswith("models/"))
    if models != ["models/model.json"]:
        raise ArchiveError(f"a .pt2 must hold one program, models/model.json; this one holds "
                           f"{', '.join(models[:5]) or 'none'}; {SAVE_HINT}.")
    for legacy in ("data/weights/model.pt", "data/constants/model.pt"):
        if legacy in entries:
            raise ArchiveError(f"this .pt2 stores {legacy} as a pickle (an old layout), "
                               "which would be unpickled as code; save it again with a "
                               "current torch.", unsafe=True)
    for config in ("data/weights/model_weights_config.json",
                   "data/constants/model_constants_config.json"):
        _check_payloads(_json(archive, entries, config), config)
    program = _json(archive, entries, "models/model.json")
    _check_expressions(program)
    facts = _facts(program)
    return ProgramFacts(facts.input_name, facts.input_size, facts.batch,
                        entries.get("data/sample_inputs/model.pt"))


def _text(archive: zipfile.ZipFile, entries: dict[str, str], name: str, limit: int) -> str:
    if name not in entries:
        return ""
    with archive.open(entries[name]) as handle:
        return handle.read(limit).decode("utf-8", "replace").strip()


def _json(archive: zipfile.ZipFile, entries: dict[str, str], name: str) -> Any:
    if name not in entries:
        raise ArchiveError(f"the .pt2 has no {name}; {SAVE_HINT}.")
    with archive.open(entries[name]) as handle:
        data = handle.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ArchiveError(f"{name} is larger than {MAX_JSON_BYTES >> 20} MB.")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ArchiveError(f"{name} in the .pt2 is not valid JSON; {SAVE_HINT}.") from None


def _check_payloads(config: Any, name: str) -> None:
    """Every tensor stored as raw bytes, none pickled; no custom or opaque objects."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ArchiveError(f"{name} in the .pt2 is not a payload list; {SAVE_HINT}.")
    for fqn, meta in entries.items():
        path = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise ArchiveError(f"the .pt2 stores {str(fqn)[:100]!r} as a pickle, which would "
                               "run code when loaded; edgeai takes programs whose tensors are "
                               "plain (dense, not subclasses), as torch.export.save writes "
                               "them for ordinary models.", unsafe=True)
        if path.startswith(("custom_obj_", "opaque_obj_")):
            raise ArchiveError(f"the .pt2 holds a custom object ({str(fqn)[:100]!r}), which "
                               "is unpickled (code) when loaded; edgeai prunes programs of "
                               "tensors only.", unsafe=True)


def _check_expressions(program: Any) -> None:
    """Every shape expression is arithmetic over symbols, as torch writes them: sympy
    evaluates these strings with ``eval``."""
    constraints = program.get("range_constraints") if isinstance(program, dict) else None
    for expression in (constraints or {}):
        _check_expression(expression)
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    _check_expression(value)
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(value for value in item if isinstance(value, (dict, list)))


def _check_expression(text: Any) -> None:
    refused = ArchiveError(f"the .pt2 has a shape expression that is not arithmetic "
                           f"({str(text)[:80]!r}); torch evaluates these as Python code, so "
                           "it was not loaded.", unsafe=True)
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        raise refused
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        raise refused from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Load, ast.operator, ast.unaryop, ast.cmpop,
                             ast.boolop, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp)):
            continue
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in EXPRESSION_CALLS):
                raise refused
            if node.func.id == "Symbol" and not (
                    node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and SYMBOL_NAME.match(node.args[0].value)):
                raise refused
            continue
        if isinstance(node, ast.keyword):
            if node.arg not in EXPRESSION_KEYWORDS or not (
                    isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool)):
                raise refused
            continue
        if isinstance(node, ast.Name):
            if node.id not in EXPRESSION_NAMES and not SYMBOL_NAME.match(node.id):
                raise refused
            continue
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not SYMBOL_NAME.match(node.value):
                raise refused
            if not isinstance(node.value, (str, int, float, bool)):
                raise refused
            continue
        raise refused


def _facts(program: Any) -> ProgramFacts:
    """The one user input: its name and sizes (float32; only the batch may be dynamic)."""
    graph_module = program["graph_module"]
    signature = graph_module["signature"]
    outputs = [next(iter(spec)) for spec in signature["output_specs"]]
    changed = sorted(set(outputs) - {"user_output"})
    if changed:
        raise ArchiveError(f"the program changes its own state ({', '.join(changed)}): it was "
                           "exported in training mode or mutates its inputs; export "
                           "model.eval(), whose forward only computes its outputs.")
    inputs = []
    for spec in signature["input_specs"]:
        kind, body = next(iter(spec.items()))
        if kind in ("custom_obj", "token"):
            raise ArchiveError(f"the program takes a {kind.replace('_', ' ')} input, which "
                               "edgeai cannot prune; it prunes programs of tensors only.")
        if kind == "user_input":
            inputs.append(body["arg"])
    described = [_describe(argument) for argument in inputs]
    tensors = [argument["as_tensor"]["name"] for argument in inputs
               if isinstance(argument, dict) and "as_tensor" in argument]
    if len(inputs) != 1 or len(tensors) != 1:
        raise ArchiveError(f"the program takes {len(inputs)} inputs "
                           f"({', '.join(described) or 'none'}); edgeai prunes programs "
                           "with one input tensor (export a wrapper whose forward takes one "
                           "tensor).")
    name = tensors[0]
    meta = graph_module["graph"]["tensor_values"][name]
    if meta.get("dtype") != FLOAT32:
        raise ArchiveError(f"the program's input {name!r} is not a float32 tensor (dtype code "
                           f"{meta.get('dtype')}); edgeai prunes programs exported in float32 "
                           "from float32 inputs (images, signals, features).")
    sizes = meta["sizes"]
    if not 2 <= len(sizes) <= 5:
        raise ArchiveError(f"the program's input {name!r} has {len(sizes)} dimensions; "
                           "edgeai takes a batch dimension and 1 to 4 more.")
    dims: list[int | None] = [size.get("as_int") if isinstance(size, dict) else None
                              for size in sizes]
    dynamic = [str(axis) for axis, dim in enumerate(dims) if axis and not isinstance(dim, int)]
    if dynamic:
        raise ArchiveError(f"the program's input {name!r} has dynamic sizes on dimension "
                           f"{', '.join(dynamic)}; only the batch (dimension 0) may be dynamic. "
                           "Export it with static sizes for the others.")
    size = [int(dim) for dim in dims[1:] if isinstance(dim, int)]
    if any(dim < 1 for dim in size) or math.prod(size) > 1 << 26:
        raise ArchiveError(f"the program's input {name!r} has sizes {size}; each must be "
                           "positive and at most 2**26 elements in all.")
    batch = dims[0] if isinstance(dims[0], int) else None
    return ProgramFacts(name, size, batch)


def _describe(argument: Any) -> str:
    if isinstance(argument, dict) and argument:
        kind, value = next(iter(argument.items()))
        name = value.get("name") if isinstance(value, dict) else None
        return f"{name} ({kind[3:]})" if name else kind[3:]
    return "?"
