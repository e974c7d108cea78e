"""Checks a user's class file before anything imports it, then imports it.

The guide allows "the base torch library" only. The check walks the syntax tree
and refuses, naming the line: imports outside :data:`ALLOWED_MODULES` (and the
parts of torch in :data:`FORBIDDEN_TORCH`); the builtins that reach code, files
or the interpreter (:data:`FORBIDDEN_NAMES`: ``__import__``, ``exec``, ``eval``,
``open``, ...); ``getattr``/``setattr``/``delattr`` with a computed name; any
dunder attribute (the classic ``().__class__.__bases__`` escapes) other than the
few a model class needs; private attributes of anything but ``self``; and, on
any object, the attribute names that lead to the system (:data:`FORBIDDEN_ANYWHERE`:
``os``, ``sys``, ``torch`` reached through another module, ``load``, ``ops``,
``hub``, ...), because what a name is bound to cannot be known statically.

This is a courtesy, not the wall: it gives an early error naming the line of an
obvious mistake. It cannot be complete (torch's data pipes read files, numpy's
``tofile`` writes them, and both pass), so the service assumes the class file
runs and relies on the sandbox child's confinement (:mod:`edgeai.sandbox.confine`),
the only place the import ever happens.
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
    # typing evaluates string annotations with eval(); strings are not checked as code.
    "get_type_hints", "ForwardRef", "get_annotations", "evaluate_forward_ref",
}

# getattr & co. are allowed only with a literal, public attribute name.
LITERAL_ATTRIBUTE_CALLS = {"getattr", "setattr", "delattr", "hasattr"}

ALLOWED_DUNDERS = {"__init__", "__name__", "__main__", "__future__", "__class__"}

# torch attributes that reach files, processes, native code or code loading.
FORBIDDEN_TORCH = {
    "ops", "hub", "load", "save", "classes", "package", "serialization", "distributed",
    "multiprocessing", "backends", "cuda", "utils", "jit", "library", "compiler", "export",
    "onnx", "fx", "profiler", "testing", "storage", "from_file", "_C", "overrides",
    "_dynamo", "_inductor", "compile", "set_default_device", "manual_seed",
}
# ``torch.utils`` is refused as a whole except these pure submodules.
ALLOWED_TORCH_UTILS = {"checkpoint", "data"}

# Attribute names refused on any object, whatever it is bound to: a module reached
# through another (``F.torch``, ``typing.sys``, ``t = torch; t.load``) cannot be
# resolved statically, so the names that lead to the system are refused outright.
FORBIDDEN_ANYWHERE = {
    "torch", "os", "sys", "subprocess", "builtins", "importlib", "shutil", "socket", "ctypes",
    "pickle", "marshal", "io", "pathlib", "posix", "nt", "signal", "threading", "inspect",
    "linecache", "tempfile", "glob", "runpy", "code", "codeop", "pty", "platform", "sysconfig",
    "ops", "hub", "load", "save", "serialization", "cpp_extension", "multiprocessing",
    "distributed", "package", "library", "classes", "from_file", "compile", "jit", "backends",
    "get_type_hints", "ForwardRef", "get_annotations", "evaluate_forward_ref", "system",
    "popen", "spawn", "fork", "exec_module", "loader",
}

# Roots whose private attributes a model may use (its own state).
OWN_ROOTS = {"self", "cls"}


def _fail(line: int, why: str) -> UnsafeInputError:
    allowed = ", ".join(ALLOWED_MODULES)
    return UnsafeInputError(f"class_def line {line}: {why}. A class file may import only "
                            f"{allowed} (and torch's submodules), and may not open files, "
                            "run code from strings, or reach the interpreter's internals.")


def _chain(node: ast.Attribute) -> tuple[ast.AST, list[str]]:
    """``a.b.c`` -> (Name a, ["b", "c"])."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return node, list(reversed(parts))


def _check_torch_path(parts: list[str], line: int) -> None:
    """Refuse ``torch.<parts>`` when it reaches the system (``parts`` after "torch")."""
    if not parts:
        return
    head = parts[0]
    if head == "utils":
        # Only a prefix of a longer chain may stop at "utils"; the full chain decides.
        if len(parts) >= 2 and parts[1] not in ALLOWED_TORCH_UTILS:
            raise _fail(line, f"torch.{'.'.join(parts[:2])} is not allowed")
        return
    if head in FORBIDDEN_TORCH or head.startswith("_"):
        raise _fail(line, f"torch.{head} is not allowed")


def _check_attribute_name(name: str, line: int, own: bool) -> None:
    if name.startswith("__") and name.endswith("__"):
        if name not in ALLOWED_DUNDERS:
            raise _fail(line, f"attribute '{name}' is not allowed")
        return
    if name in FORBIDDEN_ANYWHERE:
        raise _fail(line, f"attribute '{name}' is not allowed")
    if name.startswith("_") and not own:
        raise _fail(line, f"private attribute '{name}' is not allowed")


class _Checker:
    """The per-node checks of :func:`check_class_file`, one method per kind of node,
    called in ``ast.walk`` order (outer nodes first)."""

    def __init__(self) -> None:
        # name -> dotted module path it was imported as (``nn`` -> ``torch.nn``).
        self.modules: dict[str, str] = {}
        self.approved_calls: set[int] = set()

    def check(self, node: ast.AST) -> None:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is not None:
            method(node, getattr(node, "lineno", 0))

    def _check_path(self, dotted: str, line: int) -> None:
        """An imported ``a.b.c``: torch's forbidden parts and refused names."""
        parts = dotted.split(".")
        if parts[0] == "torch":
            _check_torch_path(parts[1:], line)
        for part in parts[1:]:
            _check_attribute_name(part, line, own=False)

    def visit_Import(self, node: ast.Import, line: int) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root not in ALLOWED_MODULES:
                raise _fail(line, f"import of '{alias.name}' is not allowed")
            if root == "torch" and alias.name.split(".")[1:2] == ["utils"] \
                    and len(alias.name.split(".")) < 3:
                _check_torch_path(alias.name.split(".")[1:], line)
                raise _fail(line, "torch.utils is not allowed")
            self._check_path(alias.name, line)
            self.modules[alias.asname or root] = alias.name if alias.asname else root

    def visit_ImportFrom(self, node: ast.ImportFrom, line: int) -> None:
        module = node.module or ""
        root = module.split(".")[0]
        if node.level or root not in ALLOWED_MODULES:
            raise _fail(line, f"import from '{'.' * node.level}{module}' is not allowed")
        for alias in node.names:
            if alias.name == "*":
                raise _fail(line, f"'from {module} import *' is not allowed")
            full = f"{module}.{alias.name}"
            self._check_path(full, line)
            if alias.name in FORBIDDEN_NAMES:
                raise _fail(line, f"'{alias.name}' is not allowed")
            self.modules[alias.asname or alias.name] = full

    def visit_Call(self, node: ast.Call, line: int) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in LITERAL_ATTRIBUTE_CALLS:
            name = node.args[1] if len(node.args) >= 2 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                raise _fail(line, f"'{func.id}' with a computed attribute name is not allowed")
            _check_attribute_name(name.value, line, own=False)
            self.approved_calls.add(id(func))

    def visit_Name(self, node: ast.Name, line: int) -> None:
        if node.id in FORBIDDEN_NAMES and id(node) not in self.approved_calls \
                and node.id not in LITERAL_ATTRIBUTE_CALLS:
            raise _fail(line, f"'{node.id}' is not allowed")
        if node.id.startswith("__") and node.id.endswith("__") \
                and node.id not in ALLOWED_DUNDERS:
            raise _fail(line, f"'{node.id}' is not allowed")

    def visit_Attribute(self, node: ast.Attribute, line: int) -> None:
        # ast.walk meets the outermost attribute first: check its whole chain from the
        # root outward, so the message names the first part that is refused.
        base, parts = _chain(node)
        if isinstance(base, ast.Name) and base.id in self.modules:
            full = self.modules[base.id].split(".") + parts
            if full[0] == "torch":
                _check_torch_path(full[1:], line)
        own = isinstance(base, ast.Name) and base.id in OWN_ROOTS
        for part in parts:
            _check_attribute_name(part, line, own=own)

    def visit_Constant(self, node: ast.Constant, line: int) -> None:
        if isinstance(node.value, str) and "__" in node.value and any(
                d in node.value for d in ("__globals__", "__builtins__", "__subclasses__",
                                          "__import__")):
            raise _fail(line, "strings naming interpreter internals are not allowed")

    def unapproved_getattr(self, tree: ast.Module) -> None:
        """getattr & co. left without a call (``f = getattr``) were not approved."""
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in LITERAL_ATTRIBUTE_CALLS \
                    and node.id != "hasattr" and id(node) not in self.approved_calls:
                raise _fail(node.lineno, f"'{node.id}' is not allowed")


def check_class_file(source: str) -> ast.Module:
    """Parse ``source`` and refuse anything outside the allowed subset.

    Returns the tree. Raises :class:`UnsafeInputError` naming the line.
    """
    try:
        tree = ast.parse(source, filename="class_def")
    except SyntaxError as error:
        raise UnsafeInputError(f"class_def line {error.lineno}: not valid Python "
                               f"({error.msg}).") from None
    checker = _Checker()
    for node in ast.walk(tree):
        checker.check(node)
    checker.unapproved_getattr(tree)
    return tree


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
