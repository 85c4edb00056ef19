"""The layer-by-layer walk shared by the one-shot baselines (POT, SparseGPT, Wanda).

:func:`walk_layers` visits every masked layer of a student (a :func:`unipts.sparse.sparsify`-ed
copy of a dense network) in forward order and hands a callback, one layer at a time, what it
needs: the layer's inputs on every calibration batch, taken from the student as processed so far
(``inputs="sparse"``) or from the dense network (``inputs="dense"``), and, if asked for, the
dense layer's outputs. The callback changes the layer in place (masks, weights); the walk then
carries the changed layer's outputs on to the layers after it. Only what the callback asks for
is computed: without ``dense_outputs`` and with sparse inputs the dense network is not run at all.

Two engines produce the activations:

* ``graph``: the student is traced with ``torch.fx`` (masked layers as leaves) and the networks
  that are needed are run node by node, in lockstep, over all calibration batches. Each
  activation is freed after its last use, so memory is the live activations of the graph (for a
  ResNet: the main path and the shortcut), and the whole walk costs one forward pass of each
  network plus the callbacks' work.
* ``hooks``: for any network ``torch.fx`` cannot trace. For each layer the prefix of the
  networks is re-run on the calibration batches and a forward hook captures the layer's input or
  output and stops the pass. Costs grow with the square of the depth.

``engine="auto"`` uses the graph when tracing works and the hooks otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
import torch.fx as fx

from ..sparse import exclude_patterns, masked_layers
from ..sparse.masked import ATTENTION_LAYERS, MaskedLayer, some_of

log = logging.getLogger(__name__)

INPUTS = ("sparse", "dense")
ENGINES = ("auto", "graph", "hooks")


@dataclass
class LayerVisit:
    """What the walk hands the callback for one masked layer.

    ``inputs`` and ``dense_outputs`` hold one tensor per calibration batch. ``outputs_wanted``
    says whether the walk will use the layer's new outputs on ``inputs`` as the student's
    activations: a callback that computed them anyway may return them (one per batch) and spare
    the walk a forward pass of the layer; otherwise it returns ``None``.
    """

    name: str
    layer: MaskedLayer
    inputs: list[torch.Tensor]
    dense_outputs: list[torch.Tensor] | None
    outputs_wanted: bool


Visitor = Callable[[LayerVisit], "list[torch.Tensor] | None"]


def as_batches(batches: Iterable, device: torch.device, label: str) -> list[torch.Tensor]:
    """The calibration images of ``batches`` (tensors or ``(images, labels)`` pairs) on ``device``."""
    out = []
    # To an accelerator the copy may run asynchronously (it does from a loader's pinned memory);
    # back to the CPU it may not: the host would read the batch before it arrived.
    non_blocking = torch.device(device).type != "cpu"
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) else b
        out.append(x.to(device, non_blocking=non_blocking))
    if not out:
        raise ValueError(f"{label}: no calibration batches")
    return out


def unwalkable_layers(student: nn.Module) -> list[str]:
    """Masked layers whose inputs the walk cannot hand a callback: an attention's projections,
    which torch's attention applies inside one call (no module boundary to capture them at)."""
    return [name for name, layer in masked_layers(student) if isinstance(layer, ATTENTION_LAYERS)]


def check_walkable(student: nn.Module, label: str = "layerwise", exclude_key: str = "exclude") -> None:
    """Refuse (ValueError, one line) a student with layers :func:`walk_layers` cannot visit;
    ``exclude_key``: the caller's name for :func:`~unipts.sparse.sparsify`'s ``exclude``."""
    names = unwalkable_layers(student)
    if names:
        patterns = ",".join(exclude_patterns(names))
        raise ValueError(f"{label}: {some_of(names)} are nn.MultiheadAttention projections, whose inputs a "
                         f"layer-wise method cannot see; keep them dense ({exclude_key}='[{patterns}]') or use a "
                         "method without a layer-wise pruner (magnitude, unipts_erk, unipts)")


def walk_layers(
    student: nn.Module,
    batches: list[torch.Tensor],
    visit: Visitor,
    *,
    dense: nn.Module | None = None,
    inputs: str = "sparse",
    dense_outputs: bool = False,
    engine: str = "auto",
    label: str = "layerwise",
) -> str:
    """Call ``visit`` on every masked layer of ``student``, in forward order; returns the engine used.

    ``batches`` are the calibration images (a list of tensors, read several times). ``dense``
    (same module names as ``student``) is needed for ``inputs="dense"`` and ``dense_outputs``.
    Both networks run in eval mode (BatchNorm with its running statistics); their modes are
    restored afterwards. ``label`` prefixes log lines and errors (``"<label>.engine=graph: ..."``).
    A layer the forward pass calls twice is visited at its first call; one it never calls is not
    visited (both are logged as warnings).
    """
    if inputs not in INPUTS:
        raise ValueError(f"{label}.inputs: {inputs!r} is not one of {list(INPUTS)}")
    if engine not in ENGINES:
        raise ValueError(f"{label}.engine: {engine!r} is not one of {list(ENGINES)}")
    if dense is None and (inputs == "dense" or dense_outputs):
        raise ValueError(f"{label}: the dense network is needed for dense inputs or dense outputs")
    check_walkable(student, label)
    networks = [student] + ([dense] if dense is not None else [])
    modes = [net.training for net in networks]
    for net in networks:
        net.eval()
    try:
        graph = None
        if engine in ("auto", "graph"):
            try:
                graph = _trace(student)
            except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the hooks
                if engine == "graph":
                    raise RuntimeError(f"{label}.engine=graph: torch.fx cannot trace {type(student).__name__}: "
                                       f"{exc}") from exc
                log.info("%s: torch.fx cannot trace %s (%s); using forward hooks", label, type(student).__name__, exc)
        walk = _Walk(student, dense, batches, visit, inputs, dense_outputs, label)
        if graph is not None:
            walk.run_graph(graph)
        else:
            walk.run_hooks()
    finally:
        for net, mode in zip(networks, modes):
            net.train(mode)
    return "graph" if graph is not None else "hooks"


def batchnorm_after(model: nn.Module) -> dict[str, str]:
    """For each masked layer of ``model`` whose output goes to a BatchNorm with running statistics
    and nowhere else, that BatchNorm's name; empty when ``torch.fx`` cannot trace ``model``.

    In eval mode such a BatchNorm subtracts its running mean from the layer's output channel by
    channel, so lowering the mean by ``d`` adds ``d`` to every output of the layer: it is where a
    layer without a bias can keep a per-channel offset without a change of architecture.
    """
    try:
        graph = _trace(model)
    except Exception:  # noqa: BLE001 - untraceable: no follower is known, callers do without
        return {}
    layers = dict(masked_layers(model))
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    seen: set[str] = set()
    found: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers or node.target in seen:
            continue
        seen.add(node.target)  # a layer called twice is processed at its first call (walk_layers)
        users = list(node.users)
        # a BatchNorm called elsewhere too would carry the offset to its other inputs as well
        if len(users) != 1 or users[0].op != "call_module" or calls[str(users[0].target)] != 1:
            continue
        bn = model.get_submodule(str(users[0].target))
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
            found[str(node.target)] = str(users[0].target)
    return found


# --------------------------------------------------------------------------- the walk


class _MaskedLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MaskedLayer) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.Graph:
    graph = _MaskedLeafTracer().trace(model)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders or any(not n.args for n in placeholders[1:]):
        raise RuntimeError("the forward must take exactly one required input")
    return graph


class _Walk:
    def __init__(self, student, dense, batches, visit, inputs, dense_outputs, label) -> None:
        self.student, self.dense, self.batches, self.visit = student, dense, batches, visit
        self.sparse_inputs = inputs == "sparse"
        self.dense_outputs = dense_outputs
        self.label = label
        self.layers = dict(masked_layers(student))
        self.visited: set[str] = set()

    def _visit(self, name: str, xs: list, ys: list | None, outputs_wanted: bool):
        self.visited.add(name)
        return self.visit(LayerVisit(name, self.layers[name], xs, ys, outputs_wanted))

    @torch.no_grad()
    def run_graph(self, graph: fx.Graph) -> None:
        """Run the needed networks node by node over all batches, visiting each masked layer on the way."""
        nodes = list(graph.nodes)
        last_use: dict[fx.Node, int] = {}
        for i, node in enumerate(nodes):
            for source in node.all_input_nodes:
                last_use[source] = i
        dense_env: dict | None = {} if not self.sparse_inputs or self.dense_outputs else None
        sparse_env: dict | None = {} if self.sparse_inputs else None
        streams = [(model, env) for model, env in ((self.dense, dense_env), (self.student, sparse_env))
                   if env is not None]
        nb = len(self.batches)
        first_placeholder = True
        warned: set[str] = set()
        for i, node in enumerate(nodes):
            if node.op == "output":
                break
            visit_here = node.op == "call_module" and node.target in self.layers
            if visit_here and node.target in self.visited:
                if node.target not in warned:
                    log.warning("%s: %s is called more than once; it is processed at its first call only",
                                self.label, node.target)
                    warned.add(node.target)
                visit_here = False
            for model, env in streams:
                if node.op == "placeholder":
                    env[node] = list(self.batches) if first_placeholder else [node.args[0]] * nb
                    continue
                if node.op == "get_attr":
                    value = model
                    for part in str(node.target).split("."):
                        value = getattr(value, part)
                    env[node] = [value] * nb
                    continue
                if visit_here and env is sparse_env:
                    continue  # computed after the visit, below: the visit changes the layer
                env[node] = _evaluate(node, model, env, nb)
            first_placeholder = first_placeholder and node.op != "placeholder"
            if visit_here:
                xs = _chunks(sparse_env if self.sparse_inputs else dense_env, node.args[0], nb)
                ys = dense_env[node] if self.dense_outputs else None
                outputs = self._visit(str(node.target), xs, ys, outputs_wanted=sparse_env is not None)
                if sparse_env is not None:
                    sparse_env[node] = outputs if outputs is not None else _evaluate(node, self.student, sparse_env, nb)
            done_with = [source for source in node.all_input_nodes if last_use[source] == i]
            if node not in last_use:  # no user: nothing needs its value
                done_with.append(node)
            for source in done_with:
                for _, env in streams:
                    env.pop(source, None)

    def run_hooks(self) -> None:
        order = _execution_order(self.student, self.layers, self.batches[0])
        for name in self.layers:
            if name not in order:
                log.warning("%s: %s is not called by the forward pass; left as it is", self.label, name)
        source = self.student if self.sparse_inputs else self.dense
        for name in order:
            ys = _capture(self.dense, name, self.batches, "output") if self.dense_outputs else None
            xs = _capture(source, name, self.batches, "input")
            self._visit(name, xs, ys, outputs_wanted=False)  # the next capture re-runs the changed layer
            del xs, ys


def _chunks(env: dict, arg, nb: int) -> list:
    return env[arg] if isinstance(arg, fx.Node) else [arg] * nb


def _evaluate(node: fx.Node, model: nn.Module, env: dict, nb: int) -> list:
    out = []
    for c in range(nb):
        args = fx.node.map_arg(node.args, lambda n: env[n][c])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n][c])
        if node.op == "call_module":
            out.append(model.get_submodule(str(node.target))(*args, **kwargs))
        elif node.op == "call_function":
            out.append(node.target(*args, **kwargs))
        elif node.op == "call_method":
            out.append(getattr(args[0], node.target)(*args[1:], **kwargs))
        else:  # pragma: no cover - every other op is handled by the caller
            raise RuntimeError(f"unexpected graph node {node.op}")
    return out


class _Stop(Exception):
    pass


def _execution_order(model: nn.Module, names: Iterable[str], x: torch.Tensor) -> list[str]:
    order: list[str] = []
    handles = []
    for name in names:
        def hook(module, inputs, output, name=name):
            if name not in order:
                order.append(name)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


@torch.no_grad()
def _capture(model: nn.Module, name: str, batches: list[torch.Tensor], want: str) -> list[torch.Tensor]:
    """The input (``want="input"``) or output of ``model.<name>`` on every batch; the pass stops there."""
    captured: list[torch.Tensor] = []

    def hook(module, inputs, output):
        captured.append(inputs[0] if want == "input" else output)
        raise _Stop

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured
