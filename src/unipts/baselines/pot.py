"""POT (Lazarevich et al., 2021): post-training sparsity with layer-wise reconstruction.

Allocation is global magnitude on per-layer L2-normalised weights (``l2norm``); then every
masked layer, in forward order, has its surviving weights and bias (mask fixed) tuned with Adam
so that its output on the calibration images matches the dense layer's output (MSE). The
layer's inputs come either from the sparse network as reconstructed so far (``inputs="sparse"``)
or from the dense network (``inputs="dense"``). The progressive variant prunes to
``P - intermediate_step`` first, reconstructs, then prunes to ``P`` and reconstructs again.

Only what one layer needs is kept: the layer's inputs and the dense layer's outputs on the
calibration images. Two engines produce them:

* ``graph``: the network is traced with ``torch.fx`` (masked layers as leaves) and the student
  and the dense network are run node by node, in lockstep, over all calibration batches. Each
  activation is freed after its last use, so memory is the live activations of the graph (for a
  ResNet: the main path and the shortcut) and the whole procedure costs one forward pass of each
  network plus the tuning.
* ``hooks``: for any network ``torch.fx`` cannot trace. For each layer the prefix of both
  networks is re-run on the calibration batches and a forward hook captures the layer's input or
  output and stops the pass. Costs grow with the square of the depth.

``engine="auto"`` uses the graph when tracing works and the hooks otherwise.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
import torch.fx as fx
import torch.nn.functional as F

from ..checks import check_number
from ..sparse import allocate, fold_masks_, masked_layers, reestimate_bn_, set_masks_
from ..sparse.masked import MaskedLayer
from ..sparse.nm import format_pattern, model_pattern

log = logging.getLogger(__name__)

INPUTS = ("sparse", "dense")
ENGINES = ("auto", "graph", "hooks")


@dataclass(frozen=True)
class PotConfig:
    """POT's reconstruction settings (the ``pot:`` node of ``method/pot.yaml``).

    ``iterations`` (Adam steps per layer) wins over ``epochs`` (passes over the layer's cached
    calibration activations) when set. The default learning rates are method.md's ImageNet
    values; small data sets with few steps need larger ones (see ``method/pot.yaml``).
    """

    lr_weight: float = 1e-5
    lr_bias: float = 1e-4
    epochs: float = 2.0
    iterations: int | None = None
    batch_size: int = 128
    inputs: str = "sparse"
    progressive: bool = False
    intermediate_step: float = 0.1
    engine: str = "auto"
    seed: int = 0
    revert_if_worse: bool = True

    def __post_init__(self) -> None:
        def number(key: str, **rule) -> None:
            check_number(getattr(self, key), f"pot.{key}", **rule)

        number("lr_weight", low=0.0)
        number("lr_bias", low=0.0)
        number("epochs", low=0.0)
        number("iterations", low=0, integer=True, allow_none=True)
        number("batch_size", low=1, integer=True)
        number("intermediate_step", low=0.0, low_open=True)
        number("seed", low=0, integer=True)
        if self.inputs not in INPUTS:
            raise ValueError(f"pot.inputs: {self.inputs!r} is not one of {list(INPUTS)}")
        if self.engine not in ENGINES:
            raise ValueError(f"pot.engine: {self.engine!r} is not one of {list(ENGINES)}")
        for key in ("progressive", "revert_if_worse"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"pot.{key}: {getattr(self, key)!r} is not a boolean")

    @classmethod
    def build(cls, config: PotConfig | Mapping[str, Any] | None = None, **overrides) -> PotConfig:
        base = asdict(config) if isinstance(config, PotConfig) else dict(config or {})
        base.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(base) - known)
        if unknown:
            raise ValueError(f"pot: unknown settings {unknown}; valid: {sorted(known)}")
        return cls(**base)

    def steps_for(self, n_samples: int) -> int:
        if self.iterations is not None:
            return self.iterations
        return math.ceil(self.epochs * math.ceil(n_samples / min(self.batch_size, n_samples)))


@dataclass
class LayerRecord:
    """What reconstruction did to one layer (MSEs are means over the calibration activations)."""

    name: str
    sparsity: float
    mse_before: float
    mse_after: float
    steps: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- tuning one layer


def _layer_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The masked layer's forward with ``weight * mask`` in autograd: pruned weights get no gradient."""
    weight = layer.weight * layer.mask
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, layer.bias)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    raise TypeError(f"cannot reconstruct a {type(layer).__name__}")


@torch.no_grad()
def _mse(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, keep_outputs: bool = False):
    """MSE of the layer's outputs on all of ``x`` to ``y``, and the outputs themselves if asked."""
    total, outputs = 0.0, []
    for i in range(0, x.shape[0], batch_size):
        out = _layer_forward(layer, x[i:i + batch_size])
        total += float(F.mse_loss(out, y[i:i + batch_size], reduction="sum"))
        if keep_outputs:
            outputs.append(out)
    return total / y.numel(), (torch.cat(outputs) if keep_outputs else None)


def _tune_layer(layer: MaskedLayer, x: torch.Tensor, y: torch.Tensor, *, lr_weight: float, lr_bias: float,
                steps: int, batch_size: int, generator: torch.Generator | None = None,
                revert_if_worse: bool = False, keep_outputs: bool = False):
    """Adam on ``layer``'s surviving weights and bias to minimise ``MSE(layer(x), y)``; mask fixed.

    ``x`` and ``y`` hold the layer's inputs and the dense layer's outputs for all calibration
    images (first dimension). Mini-batches are drawn without replacement, reshuffled every pass.
    Pruned weights get no gradient and do not move. ``revert_if_worse`` restores the original
    weights when tuning did not lower the MSE (a learning rate too large for an already small
    error). Returns the MSE over all of ``x`` before and after (after <= before with
    ``revert_if_worse``), and with ``keep_outputs`` the tuned layer's outputs on ``x``.
    """
    n = x.shape[0]
    batch_size = min(batch_size, n)
    before, outputs = _mse(layer, x, y, batch_size, keep_outputs and not steps)
    if not steps:
        return before, before, outputs
    groups = [{"params": [layer.weight], "lr": lr_weight}]
    if layer.bias is not None:
        groups.append({"params": [layer.bias], "lr": lr_bias})
    params = [p for g in groups for p in g["params"]]
    saved = [p.detach().clone() for p in params] if revert_if_worse else None
    requires = [p.requires_grad for p in params]
    optimizer = torch.optim.Adam(groups)
    order, pos = None, n
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for _ in range(steps):
                if pos + batch_size > n:
                    order, pos = torch.randperm(n, generator=generator).to(x.device), 0
                idx = order[pos:pos + batch_size]
                pos += batch_size
                loss = F.mse_loss(_layer_forward(layer, x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        for p, r in zip(params, requires):
            p.requires_grad_(r)
            p.grad = None
    after, outputs = _mse(layer, x, y, batch_size, keep_outputs)
    if saved is not None and not after < before:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
        after, outputs = _mse(layer, x, y, batch_size, keep_outputs) if keep_outputs else (before, None)
    return before, after, outputs


# --------------------------------------------------------------------------- engines


class _MaskedLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MaskedLayer) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.Graph:
    graph = _MaskedLeafTracer().trace(model)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders or any(not n.args for n in placeholders[1:]):
        raise RuntimeError("the forward must take exactly one required input")
    return graph


class _Layerwise:
    """Shared state of one reconstruction pass: settings, layers, records and progress."""

    def __init__(self, student: nn.Module, dense: nn.Module, batches: list[torch.Tensor], cfg: PotConfig) -> None:
        self.student, self.dense, self.batches, self.cfg = student, dense, batches, cfg
        self.layers = dict(masked_layers(student))
        self.n_samples = sum(b.shape[0] for b in batches)
        self.steps = self.cfg.steps_for(self.n_samples)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.records: list[LayerRecord] = []
        self.done: set[str] = set()

    def tune(self, name: str, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
             keep_outputs: bool = False) -> list[torch.Tensor] | None:
        """Tune one layer on its cached inputs and targets; with ``keep_outputs``, its new outputs per chunk."""
        layer = self.layers[name]
        t = time.perf_counter()
        sizes = [c.shape[0] for c in xs]
        x, y = torch.cat(list(xs)), torch.cat(list(ys))
        before, after, outputs = _tune_layer(
            layer, x, y, lr_weight=self.cfg.lr_weight, lr_bias=self.cfg.lr_bias, steps=self.steps,
            batch_size=self.cfg.batch_size, generator=self.generator, revert_if_worse=self.cfg.revert_if_worse,
            keep_outputs=keep_outputs,
        )
        del x, y
        sparsity = layer.n_zeros / layer.weight.numel()
        record = LayerRecord(name, sparsity, before, after, self.steps, time.perf_counter() - t)
        self.records.append(record)
        self.done.add(name)
        log.info("pot: layer %d/%d %s (sparsity %.3f): mse %.3e -> %.3e (%d steps, %.1fs)", len(self.records),
                 len(self.layers), name, sparsity, before, after, self.steps, record.seconds)
        return list(outputs.split(sizes)) if outputs is not None else None


@torch.no_grad()
def _run_graph(job: _Layerwise, graph: fx.Graph) -> None:
    """Run student and dense network node by node over all batches, tuning each masked layer on the way."""
    sparse_inputs = job.cfg.inputs == "sparse"
    nodes = list(graph.nodes)
    last_use: dict[fx.Node, int] = {}
    for i, node in enumerate(nodes):
        for source in node.all_input_nodes:
            last_use[source] = i
    streams = [("dense", job.dense, {})] + ([("sparse", job.student, {})] if sparse_inputs else [])
    nb = len(job.batches)
    first_placeholder = True
    warned: set[str] = set()
    for i, node in enumerate(nodes):
        if node.op == "output":
            break
        tune_here = node.op == "call_module" and node.target in job.layers
        if tune_here and node.target in job.done:
            if node.target not in warned:
                log.warning("pot: %s is called more than once; it is tuned at its first call only", node.target)
                warned.add(node.target)
            tune_here = False
        for kind, model, env in streams:
            if node.op == "placeholder":
                env[node] = list(job.batches) if first_placeholder else [node.args[0]] * nb
                continue
            if node.op == "get_attr":
                value = model
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                env[node] = [value] * nb
                continue
            if tune_here and kind == "sparse":
                continue  # computed after tuning, below
            env[node] = _evaluate(node, model, env, nb)
        first_placeholder = first_placeholder and node.op != "placeholder"
        if tune_here:
            dense_env = streams[0][2]
            source_env = streams[1][2] if sparse_inputs else dense_env
            xs = _chunks(source_env, node.args[0], nb)
            # in sparse-input mode the layer's outputs on its inputs are the student's activations
            outputs = job.tune(str(node.target), xs, dense_env[node], keep_outputs=sparse_inputs)
            if sparse_inputs:
                streams[1][2][node] = outputs
        done_with = [source for source in node.all_input_nodes if last_use[source] == i]
        if node not in last_use:  # no user: nothing needs its value
            done_with.append(node)
        for source in done_with:
            for _, _, env in streams:
                env.pop(source, None)


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


def _run_hooks(job: _Layerwise) -> None:
    order = _execution_order(job.student, job.layers, job.batches[0])
    for name in job.layers:
        if name not in order:
            log.warning("pot: %s is not called by the forward pass; left untuned", name)
    source = job.student if job.cfg.inputs == "sparse" else job.dense
    for name in order:
        ys = _capture(job.dense, name, job.batches, "output")
        xs = _capture(source, name, job.batches, "input")
        job.tune(name, xs, ys)
        del xs, ys


# --------------------------------------------------------------------------- public API


def _as_batches(batches: Iterable, device: torch.device) -> list[torch.Tensor]:
    out = []
    # To an accelerator the copy may run asynchronously (it does from a loader's pinned memory);
    # back to the CPU it may not: the host would read the batch before it arrived.
    non_blocking = torch.device(device).type != "cpu"
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) else b
        out.append(x.to(device, non_blocking=non_blocking))
    if not out:
        raise ValueError("pot: no calibration batches")
    return out


def reconstruct_layerwise_(
    student: nn.Module,
    dense: nn.Module,
    batches: Iterable,
    config: PotConfig | Mapping[str, Any] | None = None,
    **overrides,
) -> list[LayerRecord]:
    """Tune every masked layer of ``student`` (masks fixed) to reproduce ``dense``'s layer outputs.

    ``student`` is a sparsified copy of ``dense`` (same module names) whose masks are set;
    ``batches`` yields calibration images (tensors, or ``(images, labels)`` pairs), read once
    and kept for the pass. Layers are processed in forward order with the settings of
    :class:`PotConfig` (``config`` and/or keyword overrides). Both networks run in eval mode
    (BatchNorm with the dense running statistics); their modes are restored afterwards and
    ``dense`` is not modified. Masks are not changed; pruned weights are not touched either
    (they get no gradient), so fold the masks afterwards to zero them. Returns one record per
    tuned layer.
    """
    cfg = PotConfig.build(config, **overrides)
    device = next(student.parameters()).device
    batches = _as_batches(batches, device)
    modes = (student.training, dense.training)
    student.eval()
    dense.eval()
    job = _Layerwise(student, dense, batches, cfg)
    started = time.perf_counter()
    try:
        engine = cfg.engine
        graph = None
        if engine in ("auto", "graph"):
            try:
                graph = _trace(student)
            except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the hooks
                if engine == "graph":
                    raise RuntimeError(f"pot.engine=graph: torch.fx cannot trace {type(student).__name__}: {exc}") from exc
                log.info("pot: torch.fx cannot trace %s (%s); using forward hooks", type(student).__name__, exc)
        log.info("pot: reconstructing %d layers on %d images (%s inputs, %d Adam steps of %d per layer, %s engine)",
                 len(job.layers), job.n_samples, cfg.inputs, job.steps, min(cfg.batch_size, job.n_samples),
                 "graph" if graph is not None else "hooks")
        if graph is not None:
            _run_graph(job, graph)
        else:
            _run_hooks(job)
    finally:
        student.train(modes[0])
        dense.train(modes[1])
    log.info("pot: reconstruction done in %.1fs", time.perf_counter() - started)
    return job.records


def pot_prune_(
    student: nn.Module,
    dense: nn.Module,
    target: float,
    batches: Iterable,
    config: PotConfig | Mapping[str, Any] | None = None,
    *,
    allocation: str = "l2norm",
    allocation_options: Mapping[str, Any] | None = None,
    bn_recalibrate: bool = False,
    **overrides,
) -> dict:
    """POT on ``student`` in place: allocation, masks, layer-wise reconstruction(s), folded masks.

    ``student`` is a sparsified (:func:`unipts.sparse.sparsify`) copy of ``dense`` still holding
    the dense weights. With ``progressive`` the network is first pruned to
    ``target - intermediate_step`` and reconstructed, and the masks folded; the final allocation
    then ranks the reconstructed weights (already-pruned ones are zero, so the masks nest). The
    result has exactly ``round(target * N)`` zeros over the masked layers and the pruned weights
    are zero; under an N:M pattern (:mod:`unipts.sparse.nm`) the masks are the pattern's and
    ``progressive`` is ignored (no intermediate sparsity is feasible). ``bn_recalibrate``
    re-estimates BatchNorm statistics on the batches at the end
    (off by default: the caller usually does it). Returns a summary with per-layer records.
    """
    cfg = PotConfig.build(config, **overrides)
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity {target} is outside [0, 1)")
    device = next(student.parameters()).device
    batches = _as_batches(batches, device)
    targets = [target]
    pattern = model_pattern(student)
    if cfg.progressive and pattern is not None:
        log.info("pot: sparsity.pattern=%s fixes every layer's sparsity, so there is no intermediate sparsity to prune "
                 "to first; one step", format_pattern(pattern))
    elif cfg.progressive and target - cfg.intermediate_step > 0.0:
        targets.insert(0, target - cfg.intermediate_step)
    elif cfg.progressive:
        log.info("pot: target %.3f leaves no room for an intermediate step of %.3f; one step", target, cfg.intermediate_step)
    started = time.perf_counter()
    steps = []
    for step_target in targets:
        counts = allocate(student, allocation, step_target, **dict(allocation_options or {}))
        set_masks_(student, counts)
        log.info("pot: pruned to %.4f (%d of %d weights, %s allocation)", step_target, sum(counts.values()),
                 sum(layer.weight.numel() for _, layer in masked_layers(student)), allocation)
        records = reconstruct_layerwise_(student, dense, batches, cfg)
        fold_masks_(student)
        steps.append({"target": step_target, "zeros": sum(counts.values()), "layers": [r.as_dict() for r in records]})
    if bn_recalibrate:
        reestimate_bn_(student, batches)
    return {"config": asdict(cfg), "steps": steps, "seconds": time.perf_counter() - started}
