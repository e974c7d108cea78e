"""A ``torch.export`` program (``.pt2``) as a module the PyTorch engine prunes.

An exported program is a graph of ATen operations whose weights are inputs; torch-pruning
needs layers (``nn.Conv2d``, ``nn.Linear``...) to know what a weight's rows and columns
are. :func:`prunable_module` rebuilds the program's graph as a ``torch.fx.GraphModule``
in which every convolution, linear, batch-, layer- and group-norm call on the program's
own parameters is a real layer, named after the module it came from (``conv1``,
``layer1.0.bn2``: the names a user knows, for ``ommitted`` and the report), and every
other operation stays the ATen call it was. From there the engine is the one the
class-file form uses: dependency graph, L1 scores, rewrite, mask, recovery, saving.

Two rewrites make the rebuilt module follow its channels and any batch size:

* a view or reshape with sizes written into the program that flattens trailing
  dimensions (``[B, 64, 12, 12] -> [B, 9216]``) becomes ``torch.flatten``, which holds for
  any channel count; one that only appends size-1 dimensions becomes ``unsqueeze``;
* the batch size an export wrote into other reshapes is read from the tensor instead,
  so the module (and the ``.pt2`` it is saved as) runs on any batch.

Other reshapes keep their constant sizes: a group whose channels they carry stops the
pruned copy from running, and the engine keeps that group whole and says why. The
program's input guards (``guards_code``, which ``ExportedProgram.module()`` would
``exec``) are never used: the module is built from the graph alone.
"""
from __future__ import annotations

import io
import math
import operator
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from edgeai.pruning.base import PruningError, UnsafeInputError
from edgeai.pruning.torch_engine.archive import ArchiveError, ProgramFacts, read_facts

aten = torch.ops.aten
# Checks an export writes into the graph about the shapes it was traced with; the
# rebuilt module changes shapes, so they go (the saved program gets its own).
DROPPED = {aten._assert_tensor_metadata.default, aten._assert_scalar.default,
           aten.sym_constrain_range_for_size.default, aten.sym_constrain_range.default,
           aten._assert_async.msg, aten._assert_async.default}
VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


@dataclass
class RebuiltProgram:
    """The prunable module and what the program says about its input."""

    module: fx.GraphModule
    input_size: list[int]

    @property
    def example(self) -> torch.Tensor:
        """A seeded random sample of the input's shape (batch 1)."""
        generator = torch.Generator().manual_seed(0)
        return torch.randn(1, *self.input_size, generator=generator)


DYNAMIC_BATCH_HINT = ("export it with a dynamic batch: torch.export.export(model.eval(), (x,), "
                      "dynamic_shapes=({0: torch.export.Dim('batch')},))")


def load_program(path: str, input_size: list[int] | None = None) -> RebuiltProgram:
    """Check the .pt2 at ``path`` (:mod:`.archive`), load it, rebuild it as a prunable
    module and prove the rebuild: it gives the program's own outputs, on batches of 1
    and 2. ``input_size``, if the job has one, must be the program's.

    Raises :class:`UnsafeInputError` for a part that would run code when loaded, and
    :class:`PruningError` for anything else edgeai cannot prune.
    """
    try:
        facts = read_facts(path)
    except ArchiveError as error:
        raise (UnsafeInputError if error.unsafe else PruningError)(f"model: {error}") from None
    if input_size is not None and list(input_size) != facts.input_size:
        raise PruningError(f"input_size={','.join(map(str, input_size))} does not match the "
                           f"program: its input {facts.input_name!r} is "
                           f"{','.join(map(str, facts.input_size))} without the batch "
                           "dimension.")
    _check_sample_inputs(path, facts)
    try:
        with open(path, "rb") as handle:
            program = torch.export.load(handle)  # sandboxed: .pt2 is code
    except Exception as error:  # noqa: BLE001 - any failure to read is the user's file
        raise PruningError(f"model: torch.export.load could not read the program "
                           f"({type(error).__name__}: {str(error)[:300]}).") from None
    rebuilt = prunable_module(program)
    _check_rebuild(program, rebuilt, facts)
    return rebuilt


def _check_sample_inputs(path: str, facts: ProgramFacts) -> None:
    """The example inputs must load as tensors alone: torch.export.load retries a failed
    safe load with a full unpickle."""
    if facts.sample_inputs is None:
        raise PruningError("model: the .pt2 has no example inputs (data/sample_inputs); save "
                           "it with torch.export.save.")
    with zipfile.ZipFile(path) as archive:
        data = archive.read(facts.sample_inputs)
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle.UnpicklingError and kin
        raise UnsafeInputError(
            "model: the program's example inputs hold pickled objects other than tensors, "
            "which torch.export.load would unpickle (code); they were not loaded "
            f"({str(error).splitlines()[0][:200] if str(error) else type(error).__name__})."
        ) from None


def _check_rebuild(program: torch.export.ExportedProgram, rebuilt: RebuiltProgram,
                   facts: ProgramFacts) -> None:
    """The rebuilt module gives the program's outputs at the exported batch (the
    program's graph run with its own tensors, no guard code), and runs on batches of
    1 and 2, which the pipeline verifies on."""
    batch = facts.batch or 2
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, *rebuilt.input_size, generator=generator)
    lifted = []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            lifted.append(sample)
        else:
            name = str(spec.target)
            lifted.append(program.state_dict[name] if name in program.state_dict
                          else program.constants[name])
    with torch.no_grad():
        try:
            expected = _flat(program.graph_module(*lifted))
        except Exception as error:  # noqa: BLE001 - the program itself does not run
            raise PruningError(f"model: the program does not run on a random input of its "
                               f"own shape ({type(error).__name__}: {str(error)[:200]}).") \
                from None
        got = _flat(rebuilt.module(sample))
    if len(got) != len(expected) or any(
            a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=1e-4,
                                                     atol=1e-5 * (1 + float(b.abs().max())))
            for a, b in zip(got, expected, strict=False)):
        raise PruningError("model: edgeai could not rebuild this program faithfully (its "
                           "outputs differ from the program's); nothing was pruned.")
    for size in (1, 2):
        try:
            with torch.no_grad():
                rebuilt.module(torch.randn(size, *rebuilt.input_size, generator=generator))
        except Exception as error:  # noqa: BLE001 - a size written into the program
            exported = f"its exported batch of {facts.batch}" if facts.batch else "one batch"
            raise PruningError(
                f"model: the program runs only on {exported}, not on {size} "
                f"({type(error).__name__}: {str(error).splitlines()[0][:160]}); "
                f"{DYNAMIC_BATCH_HINT}.") from None


def _flat(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [tensor for item in output for tensor in _flat(item)]
    return []


def prunable_module(program: torch.export.ExportedProgram) -> RebuiltProgram:
    """Rebuild ``program`` as a module of real layers; see the module docstring.

    Raises :class:`PruningError` for a program edgeai cannot prune (several inputs, a
    control-flow operator, training-mode batch norm, state it changes).
    """
    return _Rebuilder(program).build()


def _arguments(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    bound: dict[str, Any] = {}
    for index, argument in enumerate(schema.arguments):
        if index < len(node.args) and not argument.kwarg_only:
            bound[argument.name] = node.args[index]
        elif argument.name in node.kwargs:
            bound[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound


def _pair(value: Any, dims: int) -> tuple[int, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return tuple(values * dims if len(values) == 1 else values)


def _shape(node: Any) -> tuple[Any, ...] | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


# -- the layers: one small builder per ATen operation ---------------------------------
@dataclass
class Layer:
    """What a builder makes of one call: the layer, its input node, the parameters it
    took over (by fully qualified name) and the name it gets."""

    module: nn.Module
    source: fx.Node
    params: dict[str, str]  # layer attribute ("weight") -> program parameter name
    name_from: str          # the parameter whose module path names the layer
    first_of_tuple: bool = False     # the call returns (output, statistics...)


def _conv(node: fx.Node, args: dict[str, Any], weight: torch.Tensor,
          transposed: bool) -> nn.Module:
    dims = weight.dim() - 2
    classes = ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) if transposed
               else (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    if not 1 <= dims <= 3:
        raise ValueError(f"a {dims}-d convolution")
    groups = int(args.get("groups") or 1)
    padding = args.get("padding", 0)
    padding = padding if isinstance(padding, str) else _pair(padding, dims)
    common = dict(kernel_size=tuple(weight.shape[2:]), stride=_pair(args.get("stride", 1), dims),
                  padding=padding, dilation=_pair(args.get("dilation", 1), dims),
                  groups=groups, bias=args.get("bias") is not None)
    if transposed:
        return classes[dims - 1](weight.shape[0], weight.shape[1] * groups,
                                 output_padding=_pair(args.get("output_padding", 0), dims),
                                 **common)
    return classes[dims - 1](weight.shape[1] * groups, weight.shape[0], **common)


def _batch_norm(rank: int, features: int, args: dict[str, Any]) -> nn.Module:
    if args.get("training"):
        raise PruningError("the program runs batch norm in training mode (it was exported "
                           "from a model in train()); export model.eval().")
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    return kind(features, eps=float(args["eps"]), momentum=float(args.get("momentum") or 0.1),
                affine=args.get("weight") is not None,
                track_running_stats=args.get("running_mean") is not None)


class _Rebuilder:
    """Copies the program's graph into a new one, node by node, making layers."""

    def __init__(self, program: torch.export.ExportedProgram):
        self.program = program
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.tensors: dict[fx.Node, tuple[str, torch.Tensor, bool]] = {}  # fqn, value, param
        self.attrs: dict[str, fx.Node] = {}
        self.taken: set[str] = set()
        self.batched: set[fx.Node] = set()
        self.batch: Any = None
        self.by_fqn: dict[str, fx.Node] = {}
        # Nodes emitted only if something other than the layer they feed needs them (the
        # transposed weight of a core-ATen linear layer).
        self.deferred: dict[fx.Node, fx.Node] = {}
        # Calls returning (output, statistics...) that became a layer: their getitem 0.
        self.firsts: set[fx.Node] = set()

    # -- inputs --------------------------------------------------------------------
    def _inputs(self) -> fx.Node:
        signature = self.program.graph_signature
        changed = [spec.kind.name for spec in signature.output_specs
                   if spec.kind.name != "USER_OUTPUT"]
        if changed:
            raise PruningError(f"the program changes its own state ({', '.join(changed)}); "
                               "export model.eval(), whose forward only computes outputs.")
        placeholders = [n for n in self.program.graph.nodes if n.op == "placeholder"]
        users = []
        state = self.program.state_dict
        constants = self.program.constants
        for node, spec in zip(placeholders, signature.input_specs, strict=True):
            kind = spec.kind.name
            if kind == "USER_INPUT":
                users.append(node)
            elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                fqn = str(spec.target)
                value = state[fqn] if fqn in state else constants[fqn]
                if not isinstance(value, torch.Tensor):
                    raise PruningError(f"the program's {fqn!r} is not a tensor.")
                self.tensors[node] = (fqn, value, kind == "PARAMETER")
                self.by_fqn[fqn] = node
            else:
                raise PruningError(f"the program takes a {kind.lower()} input, which edgeai "
                                   "cannot prune; it prunes programs of tensors only.")
        if len(users) != 1 or not isinstance(users[0].meta.get("val"), torch.Tensor):
            raise PruningError(f"the program takes {len(users)} inputs; edgeai prunes "
                               "programs with one input tensor.")
        (user,) = users
        new = self.graph.placeholder(user.name)
        new.meta = dict(user.meta)
        self.env[user] = new
        self.batched.add(user)
        self.batch = user.meta["val"].shape[0]
        return user

    def _attr(self, node: fx.Node) -> fx.Node:
        """The program tensor ``node`` as a ``get_attr`` of the rebuilt module (registered
        on first use under its own name)."""
        fqn, value, is_param = self.tensors[node]
        if fqn not in self.attrs:
            owner, _, leaf = self._owner(fqn)
            tensor = value.detach().clone()
            if is_param:
                owner.register_parameter(leaf, nn.Parameter(tensor))
            else:
                owner.register_buffer(leaf, tensor)
            self.attrs[fqn] = self.graph.get_attr(fqn)
            self.attrs[fqn].meta = dict(node.meta)
        return self.attrs[fqn]

    def _owner(self, path: str) -> tuple[nn.Module, str, str]:
        """The container module for ``path`` (made as needed), and the last name."""
        *parents, leaf = path.split(".")
        owner = self.root
        for part in parents:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        return owner, ".".join(parents), leaf

    # -- values ----------------------------------------------------------------------
    def value(self, item: Any) -> Any:
        """``item`` (a node, or a list or tuple holding nodes) in the new graph."""
        if isinstance(item, fx.Node):
            if item in self.tensors:
                return self._attr(item)
            if item not in self.env and item in self.deferred:
                self._emit(item)
            return self.env[item]
        if isinstance(item, (list, tuple)):
            return type(item)(self.value(part) for part in item)
        if isinstance(item, dict):
            return {key: self.value(part) for key, part in item.items()}
        return item

    def _is_batched(self, node: fx.Node) -> bool:
        shape = _shape(node)
        if not shape or self.batch is None or not _same(shape[0], self.batch):
            return False
        return any(isinstance(arg, fx.Node) and arg in self.batched
                   for arg in node.all_input_nodes)

    # -- the walk --------------------------------------------------------------------
    def build(self) -> RebuiltProgram:
        user = self._inputs()
        self._defer_transposed_weights()
        for node in self.program.graph.nodes:
            if node.op in ("placeholder", "get_attr") or node in self.deferred:
                continue
            if node.op == "output":
                outputs = [self.value(item) for item in node.args[0]]
                self.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
                continue
            if node.op != "call_function":
                raise PruningError(f"the program has a {node.op} node ({node.name}), which "
                                   "edgeai cannot rebuild.")
            if isinstance(node.target, torch._ops.HigherOrderOperator):
                raise PruningError(f"the program uses {node.target.name()} (control flow or "
                                   "a wrapped region), which edgeai cannot prune; export the "
                                   "model without it.")
            self._emit(node)
        module = fx.GraphModule(self.root, self.graph, class_name="PrunableProgram")
        module.graph.eliminate_dead_code()  # e.g. a batch size read only by a dropped check
        module.recompile()
        module.eval()
        return RebuiltProgram(module, [int(dim) for dim in user.meta["val"].shape[1:]])

    def _emit(self, node: fx.Node) -> None:
        """Copy one call into the new graph: as a layer, a rewritten shape operation, or
        itself."""
        if self._is_batched(node):
            self.batched.add(node)
        if node.target in DROPPED:
            return
        if node.target is operator.getitem and node.args[0] in self.firsts:
            if node.args[1] == 0:  # the layer's output is the tuple's first item
                self.env[node] = self.env[node.args[0]]
            return  # the statistics nobody reads are gone with the tuple
        made = self._layer(node)
        if made is None:
            made = self._rewrite_shape(node)
        if made is None:
            made = self.graph.call_function(node.target, self.value(node.args),
                                            self.value(node.kwargs))
        made.meta = dict(node.meta)
        self.env[node] = made

    def _defer_transposed_weights(self) -> None:
        """Core ATen writes a linear layer as ``addmm(bias, x, permute(weight))``: the
        permute is emitted only if the addmm does not become a layer."""
        for node in self.program.graph.nodes:
            if node.op == "call_function" and node.target in (aten.addmm.default,
                                                               aten.mm.default):
                weight = _arguments(node).get("mat2")
                if self.transposed_param(weight) is not None and len(weight.users) == 1:
                    self.deferred[weight] = node

    # -- layers ----------------------------------------------------------------------
    def _layer(self, node: fx.Node) -> fx.Node | None:
        """A call of a new layer for ``node``, if it is a layer operation on the program's
        own parameters, each used by this call alone (else None: it stays a call)."""
        builder = LAYER_BUILDERS.get(node.target)
        if builder is None:
            return None
        try:
            layer = builder(self, node)
        except PruningError:
            raise
        except (ValueError, TypeError, KeyError, IndexError):
            return None
        if layer is None:
            return None
        for fqn in layer.params.values():
            if fqn in self.attrs or len(self.by_fqn[fqn].users) != 1:
                return None  # shared with another operation: it stays that operation
        name = self._name(layer.name_from)
        parent, _, leaf = self._owner(name)
        with torch.no_grad():
            for attribute, fqn in layer.params.items():
                current = getattr(layer.module, attribute)
                value = self.tensors[self.by_fqn[fqn]][1].detach().clone()
                if isinstance(current, nn.Parameter):
                    setattr(layer.module, attribute,
                            nn.Parameter(value, requires_grad=current.requires_grad))
                else:
                    setattr(layer.module, attribute, value)
        parent.add_module(leaf, layer.module)
        self.taken.add(name)
        if layer.first_of_tuple:
            self.firsts.add(node)
        return self.graph.call_module(name, (self.value(layer.source),))

    def _name(self, fqn: str) -> str:
        """The layer's name: its weight's module path (``layer1.0.conv1.weight`` ->
        ``layer1.0.conv1``), unique in the rebuilt module."""
        base = fqn.rsplit(".", 1)[0] if "." in fqn else f"{fqn}_layer"
        name, index = base, 1
        while name in self.taken or name in self.attrs:
            index += 1
            name = f"{base}_{index}"
        return name

    def param(self, item: Any) -> str | None:
        """The program parameter's name if ``item`` is a node of one (else None)."""
        if isinstance(item, fx.Node) and item in self.tensors:
            return self.tensors[item][0]
        return None

    def transposed_param(self, item: Any) -> str | None:
        """The parameter's name if ``item`` is ``permute(param, [1, 0])`` or ``t(param)``."""
        if not (isinstance(item, fx.Node) and item.op == "call_function"):
            return None
        if item.target is aten.t.default or (item.target is aten.permute.default
                                             and list(item.args[1]) == [1, 0]):
            return self.param(item.args[0])
        return None

    def tensor(self, item: Any) -> torch.Tensor:
        """The value of a program tensor node."""
        return self.tensors[item][1]

    # -- shapes ----------------------------------------------------------------------
    def _rewrite_shape(self, node: fx.Node) -> fx.Node | None:
        """A view/reshape as flatten or unsqueeze where it only merges trailing dimensions
        or appends size-1 ones; with the batch read from the tensor where the program
        wrote a number; ``sym_size`` as ``Tensor.size`` (which every exporter follows)."""
        if node.target is aten.sym_size.int:
            return self.graph.call_method("size", (self.value(node.args[0]), node.args[1]))
        if node.target not in VIEWS:
            return None
        source = node.args[0]
        before, after = _shape(source), _shape(node)
        if before is None or after is None:
            return None
        new_source = self.value(source)
        for keep in range(1, len(before)):
            trailing = before[keep:]
            if (len(after) == keep + 1
                    and all(_same(a, b) for a, b in zip(after[:keep], before[:keep], strict=True))
                    and all(isinstance(d, int) for d in trailing)
                    and _same(after[keep], math.prod(trailing))):
                return self.graph.call_function(torch.flatten, (new_source, keep))
        extra = len(after) - len(before)
        head = after[:len(before)]
        if extra > 0 and all(_same(a, b) for a, b in zip(head, before, strict=True)) \
                and all(_same(d, 1) for d in after[len(before):]):
            made = new_source
            for _ in range(extra):
                made = self.graph.call_function(torch.unsqueeze, (made, -1))
            return made
        sizes = list(node.args[1])
        if source in self.batched and node in self.batched and isinstance(sizes[0], int):
            batch = self.graph.call_method("size", (new_source, 0))
            rest = self.value(sizes[1:])
            return self.graph.call_function(node.target, (new_source, [batch, *rest]))
        return None


def _same(a: Any, b: Any) -> bool:
    """Two sizes are the same: equal numbers, or the same symbol."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return str(a) == str(b)


def _only_first_output(node: fx.Node) -> bool:
    """A call returning (output, saved statistics...) whose users take only the output
    (a loaded program has unused getitems of the statistics too)."""
    return all(user.target is operator.getitem and (user.args[1] == 0 or not user.users)
               for user in node.users)


# -- builders: one per ATen operation that becomes a layer ------------------------------
def _with_bias(rebuilder: _Rebuilder, weight: str, bias: Any) -> dict[str, str] | None:
    """{"weight": ..., "bias": ...} of program parameters, or None when the bias is
    something else (computed)."""
    if bias is None:
        return {"weight": weight}
    name = rebuilder.param(bias)
    return None if name is None else {"weight": weight, "bias": name}


def _build_conv(rebuilder: _Rebuilder, node: fx.Node) -> Layer | None:
    args = _arguments(node)
    weight = rebuilder.param(args.get("weight"))
    params = _with_bias(rebuilder, weight, args.get("bias")) if weight else None
    if params is None:
        return None
    transposed = bool(args.get("transposed")) or node.target in (
        aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input)
    module = _conv(node, args, rebuilder.tensor(args["weight"]), transposed)
    return Layer(module, args["input"], params, params["weight"])


def _build_linear(rebuilder: _Rebuilder, node: fx.Node) -> Layer | None:
    args = _arguments(node)
    weight = rebuilder.param(args.get("weight"))
    params = _with_bias(rebuilder, weight, args.get("bias")) if weight else None
    if params is None or rebuilder.tensor(args["weight"]).dim() != 2:
        return None
    value = rebuilder.tensor(args["weight"])
    module = nn.Linear(value.shape[1], value.shape[0], bias="bias" in params)
    return Layer(module, args["input"], params, weight)


def _build_addmm(rebuilder: _Rebuilder, node: fx.Node) -> Layer | None:
    """``addmm(bias, x, permute(weight))`` / ``mm(x, permute(weight))`` on a 2-d input."""
    args = _arguments(node)
    if args.get("beta", 1) != 1 or args.get("alpha", 1) != 1:
        return None
    weight = rebuilder.transposed_param(args.get("mat2"))
    shape = _shape(args.get("mat1"))
    params = _with_bias(rebuilder, weight, args.get("self")) if weight else None
    if params is None or shape is None or len(shape) != 2:
        return None
    value = rebuilder.tensor(rebuilder.by_fqn[weight])
    if "bias" in params and tuple(rebuilder.tensor(args["self"]).shape) != (value.shape[0],):
        return None
    module = nn.Linear(value.shape[1], value.shape[0], bias="bias" in params)
    return Layer(module, args["mat1"], params, weight)


def _build_batch_norm(rebuilder: _Rebuilder, node: fx.Node) -> Layer | None:
    args = _arguments(node)
    tuple_output = node.target is aten._native_batch_norm_legit_no_training.default
    if tuple_output and not _only_first_output(node):
        return None
    names = {key: rebuilder.param(args.get(key)) for key in
             ("weight", "bias", "running_mean", "running_var")}
    if any(args.get(key) is not None and name is None for key, name in names.items()):
        return None
    if (names["weight"] is None) != (names["bias"] is None) or \
            (names["running_mean"] is None) != (names["running_var"] is None):
        return None
    shape = _shape(args["input"])
    if shape is None or not 2 <= len(shape) <= 5 or not isinstance(shape[1], int):
        return None
    module = _batch_norm(len(shape), shape[1], args)
    params = {key: name for key, name in names.items() if name is not None}
    name_from = names["weight"] or names["running_mean"]
    if name_from is None:
        return None
    return Layer(module, args["input"], params, name_from, first_of_tuple=tuple_output)


def _build_layer_norm(rebuilder: _Rebuilder, node: fx.Node) -> Layer | None:
    args = _arguments(node)
    tuple_output = node.target is aten.native_layer_norm.default
    if tuple_output and not _only_first_output(node):
        return None
    weight = rebuilder.param(args.get("weight"))
    params = _with_bias(rebuilder, weight, args.get("bias")) if weight else None
    if params is None:
        return None
    module = nn.LayerNorm(list(args["normalized_shape"]), eps=float(args["eps"]),
                          bias="bias" in params)
    return Layer(module, args["input"], params, weight, first_of_tuple=tuple_output)


def _build_group_norm(rebuilder: _Rebuilder, node: fx.Node) -> Layer | None:
    args = _arguments(node)
    tuple_output = node.target is aten.native_group_norm.default
    if tuple_output:
        if not _only_first_output(node):
            return None
        args["num_groups"] = args["group"]
    weight = rebuilder.param(args.get("weight"))
    params = _with_bias(rebuilder, weight, args.get("bias")) if weight else None
    if params is None or "bias" not in params:
        return None
    channels = rebuilder.tensor(args["weight"]).numel()
    module = nn.GroupNorm(int(args["num_groups"]), channels, eps=float(args["eps"]))
    return Layer(module, args["input"], params, weight, first_of_tuple=tuple_output)


Builder = Callable[[_Rebuilder, fx.Node], "Layer | None"]
LAYER_BUILDERS: dict[Any, Builder] = {
    aten.conv1d.default: _build_conv, aten.conv2d.default: _build_conv,
    aten.conv3d.default: _build_conv, aten.conv1d.padding: _build_conv,
    aten.conv2d.padding: _build_conv, aten.conv3d.padding: _build_conv,
    aten.convolution.default: _build_conv, aten.conv_transpose1d.default: _build_conv,
    aten.conv_transpose2d.input: _build_conv, aten.conv_transpose3d.input: _build_conv,
    aten.linear.default: _build_linear,
    aten.addmm.default: _build_addmm, aten.mm.default: _build_addmm,
    aten.batch_norm.default: _build_batch_norm,
    aten._native_batch_norm_legit_no_training.default: _build_batch_norm,
    aten.layer_norm.default: _build_layer_norm, aten.native_layer_norm.default: _build_layer_norm,
    aten.group_norm.default: _build_group_norm, aten.native_group_norm.default: _build_group_norm,
}
