"""Checks a user's class file before anything imports it, then imports it.

The guide allows "the base torch library" only. The check walks the syntax tree
and refuses, naming the line: imports outside :data:`ALLOWED_MODULES`; the
builtins that reach code, files or the interpreter (``__import__``, ``exec``,
``eval``, ``open``, ...); any dunder attribute (the classic ``().__class__``
escapes) other than the few a model class needs; and the parts of torch that
reach the operating system or load code (``torch.ops``, ``torch.hub``,
``torch._C``, ``torch.load``, ...). It is one layer of defence: the import
itself only ever happens inside the confined sandbox child.
"""
from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from edgeai.pruning.base import UnsafeInputError

ALLOWED_MODULES = ("torch", "math", "typing", "collections", "functools", "itertools",
                   "numbers", "dataclasses", "enum", "abc", "__future__")

FORBIDDEN_NAMES = {
    "__import__", "exec", "eval", "compile", "open", "input", "breakpoint", "globals",
    "locals", "vars", "getattr", "setattr", "delattr", "memoryview", "__builtins__",
    "__loader__", "__spec__", "exit", "quit", "help", "copyright", "credits", "license",
}

ALLOWED_DUNDERS = {"__init__", "__name__", "__main__", "__future__", "__class__"}

# torch attributes that reach files, processes, native code or code loading.
FORBIDDEN_TORCH = {
    "ops", "hub", "load", "save", "classes", "package", "serialization", "distributed",
    "multiprocessing", "backends", "cuda", "utils", "jit", "library", "compiler", "export",
    "onnx", "fx", "profiler", "testing", "storage", "from_file", "_C", "overrides",
    "_dynamo", "_inductor", "compile", "set_default_device", "manual_seed",
}
# ``torch.utils`` is refused as a whole except these pure submodules.
ALLOWED_TORCH_UTILS = {"checkpoint"}


def _fail(line: int, why: str) -> UnsafeInputError:
    allowed = ", ".join(ALLOWED_MODULES)
    return UnsafeInputError(f"class_def line {line}: {why}. A class file may import only "
                            f"{allowed} (and torch's submodules), and may not open files, "
                            "run code from strings, or reach the interpreter's internals.")


def _torch_path(node: ast.AST) -> list[str] | None:
    """``torch.a.b`` -> ["a", "b"]; None when the expression does not start at torch."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "torch":
        return list(reversed(parts))
    return None


def _check_torch_path(parts: list[str], line: int) -> None:
    if not parts:
        return
    head = parts[0]
    if head == "utils":
        if len(parts) < 2 or parts[1] not in ALLOWED_TORCH_UTILS | {"data"}:
            raise _fail(line, f"torch.{'.'.join(parts[:2])} is not allowed")
        return
    if head in FORBIDDEN_TORCH or head.startswith("_"):
        raise _fail(line, f"torch.{head} is not allowed")


def check_class_file(source: str) -> ast.Module:
    """Parse ``source`` and refuse anything outside the allowed subset.

    Returns the tree. Raises :class:`UnsafeInputError` naming the line.
    """
    try:
        tree = ast.parse(source, filename="class_def")
    except SyntaxError as error:
        raise UnsafeInputError(f"class_def line {error.lineno}: not valid Python "
                               f"({error.msg}).") from None
    aliases_of_torch = {"torch"}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root not in ALLOWED_MODULES:
                    raise _fail(line, f"import of '{alias.name}' is not allowed")
                if root == "torch":
                    _check_torch_path(alias.name.split(".")[1:], line)
                    if alias.asname and alias.name == "torch":
                        aliases_of_torch.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            root = module.split(".")[0]
            if node.level or root not in ALLOWED_MODULES:
                raise _fail(line, f"import from '{'.' * node.level}{module}' is not allowed")
            if root == "torch":
                parts = module.split(".")[1:]
                for alias in node.names:
                    _check_torch_path(parts + [alias.name] if not parts else parts, line)
                    if not parts and alias.name == "*":
                        raise _fail(line, "'from torch import *' is not allowed")
        elif isinstance(node, ast.Name):
            if node.id in FORBIDDEN_NAMES:
                raise _fail(line, f"'{node.id}' is not allowed")
            if node.id.startswith("__") and node.id.endswith("__") \
                    and node.id not in ALLOWED_DUNDERS:
                raise _fail(line, f"'{node.id}' is not allowed")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr.endswith("__") \
                    and node.attr not in ALLOWED_DUNDERS:
                raise _fail(line, f"attribute '{node.attr}' is not allowed")
            if node.attr.startswith("_") and node.attr in ("_C", "_ops", "_dynamo", "_utils"):
                raise _fail(line, f"attribute '{node.attr}' is not allowed")
            base = node
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases_of_torch:
                parts = _torch_path(_rename_root(node, base.id))
                if parts is not None:
                    _check_torch_path(parts, line)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "__" in node.value and any(d in node.value for d in ("__globals__", "__builtins__",
                                                                     "__subclasses__",
                                                                     "__import__")):
                raise _fail(line, "strings naming interpreter internals are not allowed")
    return tree


def _rename_root(node: ast.Attribute, name: str) -> ast.AST:
    """Treat an alias of torch (``import torch as T``) as ``torch``."""
    if name == "torch":
        return node
    clone = ast.parse(ast.unparse(node), mode="eval").body
    base = clone
    while isinstance(base, ast.Attribute):
        base = base.value
    if isinstance(base, ast.Name):
        base.id = "torch"
    return clone


def module_name_for(client_file_name: str) -> str:
    """The module name the pickled model will refer to: the class file's stem
    (``model.py`` -> ``model``), or ``model`` when the stem is not an identifier."""
    stem = Path(client_file_name or "model.py").stem
    return stem if stem.isidentifier() else "model"


def import_class_file(path: str, module_name: str) -> ModuleType:
    """Check and import the class file as ``module_name`` (registered in sys.modules).

    Raises :class:`UnsafeInputError` for a refused file and ``PruningError``
    subclasses for one that fails while importing.
    """
    from edgeai.pruning.base import PruningError

    try:
        source = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnsafeInputError("class_def is not a UTF-8 text file.") from None
    check_class_file(source)
    if module_name in sys.modules and not getattr(sys.modules[module_name], "__edgeai__", False):
        # Never shadow a real module (torch, math, ...): the pickle would point at it.
        raise PruningError(f"class_def's file name '{module_name}.py' clashes with a Python "
                           "module; rename the file (e.g. model.py).")
    # The upload is stored under a server-made name without ".py": name the loader.
    loader = importlib.machinery.SourceFileLoader(module_name, str(path))
    spec = importlib.util.spec_from_loader(module_name, loader)
    module = importlib.util.module_from_spec(spec)
    module.__edgeai__ = True
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's module failed to import
        raise PruningError(f"class_def failed to import: {type(error).__name__}: {error}") \
            from None
    return module
