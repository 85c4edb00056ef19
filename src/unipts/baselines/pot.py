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

What the reference does (OpenVINO's Post-training Optimization Tool, openvinotoolkit/openvino,
``tools/pot/openvino/tools/pot/algorithms/``: ``sparsity/magnitude_sparsity/algorithm.py``,
``sparsity/default/base_algorithm.py``, ``sparsity/layerwise_finetuning/algorithm.py``,
``finetuning/algorithm.py``, ``quantization/fast_bias_correction/algorithm.py``), read for its facts:

* Masks: one threshold over every layer's ``|W| / ||W||_2`` (the ``l2norm`` allocation).
* At each sparsity level, as it masks, a correction of the weights' statistics (its
  ``correct_weight_bias``, on by default): per output channel the weights are scaled by
  ``std(W) / std(W * M)`` and shifted by ``mean(W) - mean(s * W * M)`` before the pruned ones
  are zeroed (standard deviations and means over the whole channel, zeros included) -- here
  ``weight_correction``.
* Then a bias correction (its ``FastBiasCorrection``, run on every layer with a bias): the
  layer without its bias is run on its mean input and the bias set so that each output channel's
  mean is the one measured before the pruning -- here ``bias_correction``, with the dense layer's
  mean output as the target at every level.
* Then the layer-wise fine-tuning: Adam without weight decay, ``torch.nn.MSELoss`` between each
  layer's output and the original layer's, learning rates 1e-5 (weights) and 1e-4 (bias),
  pruned weights' gradients zeroed; inputs from the original network (``use_only_fp_inputs``),
  so every layer is tuned at once. Per level 30 iterations, each a random batch of 50 images from
  a pool of 300 calibration images on which Adam takes 40 steps (2,000 samples / 50): 1,200
  steps per layer per level.
* Two levels: ``P - 0.1``, then ``P`` on the network tuned at the first
  (``initial_sparsity_level_diff``).
* Not reproduced here: the pool of 300 images (batches are drawn from every calibration image);
  its rule of taking fresh gradients only on a step where the summed, normalised loss went up
  and otherwise stepping Adam on without them (``calculate_grads_on_loss_increase_only``); and
  the quantization tool's activation channel alignment it runs first.

In this module's settings the reference's are: ``lr_weight=1e-5 lr_bias=1e-4 iterations=1200
batch_size=50 inputs=dense progressive=true intermediate_step=0.1 weight_correction=true
bias_correction=true revert_if_worse=false`` (:data:`PUBLISHED`).

The reference works on OpenVINO graphs, where BatchNorm is folded into the convolution before it,
so every layer there has a bias. Here a convolution without bias is followed by its BatchNorm:
with ``bias_correction`` such a layer gets a per-channel output offset in place of that bias,
corrected and then tuned at ``lr_bias`` like one, and kept in the BatchNorm's running mean
(eval-mode BatchNorm subtracts it, so lowering it by ``d`` adds ``d`` to the layer's output). A
layer with neither (or in a network ``torch.fx`` cannot trace) is tuned without the correction.
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
from .layerwise import ENGINES, INPUTS, LayerVisit, as_batches, batchnorm_after, walk_layers
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PotConfig(Settings):
    """POT's reconstruction settings (the ``pot:`` node of ``method/pot.yaml``).

    ``iterations`` (Adam steps per layer) wins over ``epochs`` (passes over the layer's cached
    calibration activations) when set. The default learning rates are the reference's; small
    data sets with few steps need larger ones (see ``method/pot.yaml``). ``weight_correction``
    and ``bias_correction`` are the reference's two corrections (module docstring); off by
    default so that the bare settings are the plain reconstruction. :data:`PUBLISHED` holds the
    reference's settings.
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
    weight_correction: bool = False
    bias_correction: bool = False

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
        self.check_bool("weight_correction")
        self.check_bool("bias_correction")

    def steps_for(self, n_samples: int) -> int:
        if self.iterations is not None:
            return self.iterations
        return math.ceil(self.epochs * math.ceil(n_samples / min(self.batch_size, n_samples)))


#: The reference's settings (module docstring), in :class:`PotConfig`'s keys.
PUBLISHED: dict[str, Any] = dict(lr_weight=1e-5, lr_bias=1e-4, iterations=1200, batch_size=50, inputs="dense",
                                 progressive=True, intermediate_step=0.1, weight_correction=True,
                                 bias_correction=True, revert_if_worse=False)


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


def _layer_forward(layer: nn.Module, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """The masked layer's forward with ``weight * mask`` in autograd: pruned weights get no gradient.
    ``offset`` (one value per output channel) is added to the output, as a bias would be."""
    weight = layer.weight * layer.mask
    if isinstance(layer, nn.Conv2d):
        out = layer._conv_forward(x, weight, layer.bias)
    elif isinstance(layer, nn.Linear):
        out = F.linear(x, weight, layer.bias)
    else:
        raise TypeError(f"cannot reconstruct a {type(layer).__name__}")
    return out if offset is None else out + _per_channel(offset, layer, out)


def _channel_dim(layer: nn.Module, out: torch.Tensor) -> int:
    """Where ``layer``'s output channels are in ``out``: dimension 1 for a convolution, the last for a linear layer."""
    return 1 if isinstance(layer, nn.Conv2d) else out.dim() - 1


def _per_channel(values: torch.Tensor, layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """``values`` (one per output channel) shaped to broadcast over ``out``."""
    shape = [1] * out.dim()
    shape[_channel_dim(layer, out)] = -1
    return values.view(shape)


def _channel_sums(layer: nn.Module, out: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per output channel, the sum of ``out`` over everything else (float64), and how many values each sums."""
    channel = _channel_dim(layer, out)
    dims = [d for d in range(out.dim()) if d != channel]
    return out.double().sum(dim=dims), out.numel() // out.shape[channel]


@torch.no_grad()
def _mean_gap(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              offset: torch.Tensor | None = None) -> torch.Tensor:
    """Per output channel, the dense outputs' mean ``y`` minus the layer's mean output on ``x``."""
    gap, count = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        dense_sum, n = _channel_sums(layer, y[i:i + batch_size])
        own_sum, _ = _channel_sums(layer, _layer_forward(layer, x[i:i + batch_size], offset))
        gap, count = gap + dense_sum - own_sum, count + n
    return gap / count


@torch.no_grad()
def correct_bias_(layer: MaskedLayer, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 128,
                  offset: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's bias correction on one layer: its bias (or, for a layer without one, the
    per-channel ``offset`` added to its output) moved so that each output channel's mean on the
    inputs ``x`` is the dense outputs' ``y``. Returns the shift applied."""
    target = layer.bias if offset is None else offset
    if target is None:
        raise ValueError("pot.bias_correction: the layer has no bias and no offset was given")
    shift = _mean_gap(layer, x, y, batch_size, offset)
    target.add_(shift.to(target.dtype))
    return shift


@torch.no_grad()
def correct_weight_statistics_(layer: MaskedLayer, eps: float = 1e-9) -> None:
    """The reference's weight correction, on one layer whose mask is set: per output channel the
    surviving weights are scaled by ``std(W) / std(W * M)`` and shifted by ``mean(W) - mean(s * W * M)``
    (population statistics over the whole channel, zeros included), which gives the masked channel
    back the spread the pruning took from it. Pruned weights are left as they are (the mask hides them)."""
    weight = layer.weight
    rows = weight.detach().reshape(weight.shape[0], -1).double()
    kept_mask = layer.mask.reshape(weight.shape[0], -1) != 0
    kept = torch.where(kept_mask, rows, 0.0)
    scale = rows.std(1, unbiased=False, keepdim=True) / (kept.std(1, unbiased=False, keepdim=True) + eps)
    shift = rows.mean(1, keepdim=True) - (kept * scale).mean(1, keepdim=True)
    corrected = torch.where(kept_mask, rows * scale + shift, rows)
    weight.copy_(corrected.reshape(weight.shape).to(weight.dtype))


@torch.no_grad()
def _mse(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, keep_outputs: bool = False,
         offset: torch.Tensor | None = None):
    """MSE of the layer's outputs on all of ``x`` to ``y``, and the outputs themselves if asked."""
    total, outputs = 0.0, []
    for i in range(0, x.shape[0], batch_size):
        out = _layer_forward(layer, x[i:i + batch_size], offset)
        total += float(F.mse_loss(out, y[i:i + batch_size], reduction="sum"))
        if keep_outputs:
            outputs.append(out)
    return total / y.numel(), (torch.cat(outputs) if keep_outputs else None)


def _tune_layer(layer: MaskedLayer, x: torch.Tensor, y: torch.Tensor, *, lr_weight: float, lr_bias: float,
                steps: int, batch_size: int, generator: torch.Generator | None = None,
                revert_if_worse: bool = False, keep_outputs: bool = False, offset: torch.Tensor | None = None):
    """Adam on ``layer``'s surviving weights and bias to minimise ``MSE(layer(x), y)``; mask fixed.

    ``x`` and ``y`` hold the layer's inputs and the dense layer's outputs for all calibration
    images (first dimension). Mini-batches are drawn without replacement, reshuffled every pass.
    Pruned weights get no gradient and do not move. ``revert_if_worse`` restores the original
    weights when tuning did not lower the MSE (a learning rate too large for an already small
    error). ``offset`` (a tensor, one value per output channel) is added to the outputs and tuned
    like a bias, in place. Returns the MSE over all of ``x`` before and after (after <= before
    with ``revert_if_worse``), and with ``keep_outputs`` the tuned layer's outputs on ``x``
    (offset included).
    """
    n = x.shape[0]
    batch_size = min(batch_size, n)
    before, outputs = _mse(layer, x, y, batch_size, keep_outputs and not steps, offset)
    if not steps:
        return before, before, outputs
    groups = [{"params": [layer.weight], "lr": lr_weight}]
    biases = [b for b in (layer.bias, offset) if b is not None]
    if biases:
        groups.append({"params": biases, "lr": lr_bias})
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
                loss = F.mse_loss(_layer_forward(layer, x[idx], offset), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        for p, r in zip(params, requires):
            p.requires_grad_(r)
            p.grad = None
    after, outputs = _mse(layer, x, y, batch_size, keep_outputs, offset)
    if saved is not None and not after < before:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)
        after, outputs = _mse(layer, x, y, batch_size, keep_outputs, offset) if keep_outputs else (before, None)
    return before, after, outputs


# --------------------------------------------------------------------------- one layer per visit


class _Reconstruction:
    """The walk's callback: tunes each visited layer on its inputs and the dense layer's outputs.

    With ``bias_correction``, a layer without bias whose output goes only to a BatchNorm
    (``offsets_in``: layer name -> that BatchNorm in the student and in ``dense``) carries its
    offset in the student BatchNorm's running mean, measured from the dense one's: the offset
    carries over from one sparsity level to the next, and what the walk runs after the layer sees it.
    """

    def __init__(self, n_layers: int, n_samples: int, cfg: PotConfig,
                 offsets_in: Mapping[str, tuple[nn.Module, nn.Module]] | None = None) -> None:
        self.cfg, self.n_layers = cfg, n_layers
        self.steps = cfg.steps_for(n_samples)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.offsets_in = dict(offsets_in or {})
        self.records: list[LayerRecord] = []
        self.uncorrected: list[str] = []

    def __call__(self, visit: LayerVisit) -> list[torch.Tensor] | None:
        """Tune one layer on its inputs and targets; when the walk wants them, its new outputs per batch."""
        layer, cfg = visit.layer, self.cfg
        t = time.perf_counter()
        sizes = [c.shape[0] for c in visit.inputs]
        x, y = torch.cat(list(visit.inputs)), torch.cat(list(visit.dense_outputs))
        offset, bns = None, self.offsets_in.get(visit.name)
        if cfg.bias_correction and layer.bias is None and bns is not None:
            student_bn, dense_bn = bns
            offset = (dense_bn.running_mean - student_bn.running_mean).float()
        corrected = cfg.bias_correction and (layer.bias is not None or offset is not None)
        if cfg.bias_correction and not corrected:
            self.uncorrected.append(visit.name)
        if corrected:
            before_correction, _ = _mse(layer, x, y, min(cfg.batch_size, x.shape[0]), offset=offset)
            correct_bias_(layer, x, y, batch_size=cfg.batch_size, offset=offset)
        # the offset is the BatchNorm's to add: the walk takes the layer's own outputs from the layer
        before, after, outputs = _tune_layer(
            layer, x, y, lr_weight=cfg.lr_weight, lr_bias=cfg.lr_bias, steps=self.steps,
            batch_size=cfg.batch_size, generator=self.generator, revert_if_worse=cfg.revert_if_worse,
            keep_outputs=visit.outputs_wanted and offset is None, offset=offset,
        )
        if offset is not None:
            with torch.no_grad():
                student_bn.running_mean.copy_(dense_bn.running_mean - offset.to(dense_bn.running_mean.dtype))
        if corrected:
            before = before_correction
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
    (they get no gradient), so fold the masks afterwards to zero them. With ``bias_correction``
    the student's BatchNorms right after bias-less layers get new running means (module
    docstring); ``mse_before`` in the records is then measured before the correction. Returns one
    record per tuned layer.
    """
    cfg = PotConfig.build(config, **overrides)
    device = next(student.parameters()).device
    batches = as_batches(batches, device, "pot")
    n_layers = sum(1 for _ in masked_layers(student))
    n_samples = sum(b.shape[0] for b in batches)
    offsets_in = {}
    if cfg.bias_correction:
        for name, bn in batchnorm_after(student).items():
            offsets_in[name] = (student.get_submodule(bn), dense.get_submodule(bn))
    job = _Reconstruction(n_layers, n_samples, cfg, offsets_in)
    started = time.perf_counter()
    log.info("pot: reconstructing %d layers on %d images (%s inputs, %d Adam steps of %d per layer%s)",
             n_layers, n_samples, cfg.inputs, job.steps, min(cfg.batch_size, n_samples),
             ", bias correction" if cfg.bias_correction else "")
    engine = walk_layers(student, batches, job, dense=dense, inputs=cfg.inputs, dense_outputs=True,
                         engine=cfg.engine, label="pot")
    if job.uncorrected:
        log.warning("pot.bias_correction: %d layer(s) have no bias and no BatchNorm of their own after them (or the "
                    "network cannot be traced), so nothing can hold their correction: %s", len(job.uncorrected),
                    ", ".join(job.uncorrected))
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
    ``progressive`` is ignored (no intermediate sparsity is feasible). With ``weight_correction``
    each masking is followed by the reference's correction of the surviving weights'
    statistics (:func:`correct_weight_statistics_`). ``bn_recalibrate``
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
        if cfg.weight_correction:
            for _, layer in masked_layers(student):
                correct_weight_statistics_(layer)
        log.info("pot: pruned to %.4f (%d of %d weights, %s allocation%s)", step_target, sum(counts.values()),
                 sum(layer.weight.numel() for _, layer in masked_layers(student)), allocation,
                 ", weight statistics corrected" if cfg.weight_correction else "")
        records = reconstruct_layerwise_(student, dense, batches, cfg)
        fold_masks_(student)
        steps.append({"target": step_target, "zeros": sum(counts.values()), "layers": [r.as_dict() for r in records]})
    if bn_recalibrate:
        reestimate_bn_(student, batches)
    return {"config": asdict(cfg), "steps": steps, "seconds": time.perf_counter() - started}
