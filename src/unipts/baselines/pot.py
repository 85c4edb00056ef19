"""POT (Lazarevich et al., 2021): post-training sparsity with layer-wise reconstruction.

Allocation is global magnitude on per-layer L2-normalised weights (``l2norm``); then every
masked layer, in forward order, has its surviving weights and bias (mask fixed) tuned with Adam
so that its output on the calibration images matches the dense layer's output (MSE). The
layer's inputs come either from the sparse network as reconstructed so far (``inputs="sparse"``)
or from the dense network (``inputs="dense"``). The progressive variant prunes to
``P - intermediate_step`` first, reconstructs, then prunes to ``P`` and reconstructs again.

The layer-by-layer walk (forward order, engines, which network feeds the layer) is
:mod:`unipts.baselines.layerwise`; here is what POT does with each layer. Only what one layer
needs is kept: the layer's inputs and the dense layer's outputs on the calibration images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
import torch.nn.functional as F

from ..sparse import allocate, fold_masks_, masked_layers, reestimate_bn_, set_masks_
from ..sparse.masked import MaskedLayer
from ..sparse.nm import format_pattern, model_pattern
from .layerwise import ENGINES, INPUTS, LayerVisit, as_batches, walk_layers
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PotConfig(Settings):
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

    KEY: ClassVar[str] = "pot"

    def __post_init__(self) -> None:
        self.check_number("lr_weight", low=0.0)
        self.check_number("lr_bias", low=0.0)
        self.check_number("epochs", low=0.0)
        self.check_number("iterations", low=0, integer=True, allow_none=True)
        self.check_number("batch_size", low=1, integer=True)
        self.check_number("intermediate_step", low=0.0, low_open=True)
        self.check_number("seed", low=0, integer=True)
        self.check_choice("inputs", INPUTS)
        self.check_choice("engine", ENGINES)
        self.check_bool("progressive")
        self.check_bool("revert_if_worse")

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


# --------------------------------------------------------------------------- one layer per visit


class _Reconstruction:
    """The walk's callback: tunes each visited layer on its inputs and the dense layer's outputs."""

    def __init__(self, n_layers: int, n_samples: int, cfg: PotConfig) -> None:
        self.cfg, self.n_layers = cfg, n_layers
        self.steps = cfg.steps_for(n_samples)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.records: list[LayerRecord] = []

    def __call__(self, visit: LayerVisit) -> list[torch.Tensor] | None:
        """Tune one layer on its inputs and targets; when the walk wants them, its new outputs per batch."""
        layer = visit.layer
        t = time.perf_counter()
        sizes = [c.shape[0] for c in visit.inputs]
        x, y = torch.cat(list(visit.inputs)), torch.cat(list(visit.dense_outputs))
        before, after, outputs = _tune_layer(
            layer, x, y, lr_weight=self.cfg.lr_weight, lr_bias=self.cfg.lr_bias, steps=self.steps,
            batch_size=self.cfg.batch_size, generator=self.generator, revert_if_worse=self.cfg.revert_if_worse,
            keep_outputs=visit.outputs_wanted,
        )
        del x, y
        sparsity = layer.n_zeros / layer.weight.numel()
        record = LayerRecord(visit.name, sparsity, before, after, self.steps, time.perf_counter() - t)
        self.records.append(record)
        log.info("pot: layer %d/%d %s (sparsity %.3f): mse %.3e -> %.3e (%d steps, %.1fs)", len(self.records),
                 self.n_layers, visit.name, sparsity, before, after, self.steps, record.seconds)
        return list(outputs.split(sizes)) if outputs is not None else None


# --------------------------------------------------------------------------- public API


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
    batches = as_batches(batches, device, "pot")
    n_layers = sum(1 for _ in masked_layers(student))
    n_samples = sum(b.shape[0] for b in batches)
    job = _Reconstruction(n_layers, n_samples, cfg)
    started = time.perf_counter()
    log.info("pot: reconstructing %d layers on %d images (%s inputs, %d Adam steps of %d per layer)",
             n_layers, n_samples, cfg.inputs, job.steps, min(cfg.batch_size, n_samples))
    engine = walk_layers(student, batches, job, dense=dense, inputs=cfg.inputs, dense_outputs=True,
                         engine=cfg.engine, label="pot")
    log.info("pot: reconstruction done in %.1fs (%s engine)", time.perf_counter() - started, engine)
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
    batches = as_batches(batches, device, "pot")
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
