"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with an OBS weight update per layer.

Per masked layer, in forward order, on its inputs from the network pruned so far:

1. The Hessian of the layer's squared output error, ``H = 2 X Xᵀ / n`` over the ``n`` input
   vectors the calibration images give (a convolution's inputs unfolded with its kernel, stride,
   padding and dilation; a Linear's flattened over all but the last dimension). A grouped or
   depthwise convolution has one Hessian per group: its groups see disjoint inputs.
2. Dead inputs (zero diagonal: never non-zero on the calibration images) get a unit diagonal, and
   ``dampening`` times the mean diagonal is added to the diagonal (per group), so that ``H`` is
   invertible; if the Cholesky factorisation still fails the dampening is raised tenfold (logged).
3. ``U``, the upper Cholesky factor of ``H⁻¹``, turns optimal brain surgeon into a left-to-right
   sweep over the columns: when column ``j`` is pruned its error ``w / U_jj`` is spread over the
   later columns along row ``j`` of ``U``. Columns go in blocks of ``block_size``: the mask of a
   block is chosen when the sweep reaches it, by the OBS saliency ``w² / U_jj²`` of the weights
   as updated so far, and the error of the whole block reaches the later blocks in one product.

Exactness. A layer with ``k`` zeros of ``rows x columns`` gets, in the block ending at column
``c``, ``round(k c / columns) - round(k c' / columns)`` of them, ``c'`` being where the block
starts: the block's share of ``k`` by columns, rounded so that the shares add up to ``k`` (the
remainder is carried from block to block). They are the block's lowest saliencies over all its
rows (and groups) at once, ties broken by position, so rows may differ in sparsity as in the
reference's threshold over the block, but the layer's count is exact. Weights on dead inputs have
saliency 0: pruning them costs nothing on the calibration images.

N:M. A layer with a pattern ``(n, m)`` (:mod:`unipts.sparse.nm`) prunes ``m - n`` of every group of
``m`` consecutive columns of each row, chosen by saliency when the sweep reaches the group (block
boundaries are rounded up to multiples of ``m``); a layer that cannot carry the pattern is left
dense, as the allocation says.

All of it runs in float32 (also under autocast); the updated weights are written back in the
layer's dtype, pruned weights as exact zeros, with the mask in the layer's ``mask`` buffer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..sparse.masked import MaskedLayer
from ..sparse.pattern import Pattern, is_eligible
from .columns import input_columns, weight_matrices
from .layerwise import ENGINES, INPUTS
from .oneshot import prune_layerwise_
from .settings import Settings

log = logging.getLogger(__name__)

#: How often a failed Cholesky factorisation is retried with ten times the dampening.
CHOLESKY_RETRIES = 6


@dataclass(frozen=True)
class SparseGPTConfig(Settings):
    """SparseGPT's settings: ``dampening`` (the fraction of the mean Hessian diagonal added to the
    diagonal), ``block_size`` (columns whose mask is chosen together; the reference's 128), the
    network the Hessians' inputs come from (``inputs``: ``"sparse"``, the network pruned so far,
    or ``"dense"``, which needs the dense network) and the walk's ``engine`` (see
    :mod:`unipts.baselines.layerwise`)."""

    dampening: float = 0.01
    block_size: int = 128
    inputs: str = "sparse"
    engine: str = "auto"

    KEY: ClassVar[str] = "sparsegpt"

    def __post_init__(self) -> None:
        self.check_number("dampening", low=0.0)
        self.check_number("block_size", low=1, integer=True)
        self.check_choice("inputs", INPUTS)
        self.check_choice("engine", ENGINES)


# --------------------------------------------------------------------------- the math on matrices


def hessian(layer: nn.Module, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """``2 X Xᵀ / n`` of the layer's inputs over all batches, float32 ``(groups, columns, columns)``."""
    total, count = None, 0
    for x in inputs:
        cols = input_columns(layer, x)
        total = cols @ cols.transpose(1, 2) if total is None else total.baddbmm_(cols, cols.transpose(1, 2))
        count += cols.shape[-1]
    return total * (2.0 / max(count, 1))


def inverse_cholesky(h: torch.Tensor, dampening: float) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + damping)⁻¹`` (batched over groups), dead inputs given a
    unit diagonal first. The dampening is raised tenfold while the factorisation fails."""
    h = h.clone()
    diag = h.diagonal(dim1=-2, dim2=-1)
    diag.masked_fill_(diag == 0, 1.0)
    scale = diag.mean(-1, keepdim=True)
    damp = dampening
    for attempt in range(CHOLESKY_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(h + torch.diag_embed(damp * scale.expand_as(diag)))
        if not info.any():
            if attempt:
                log.warning("sparsegpt: the Hessian needed dampening %.3g (sparsegpt.dampening=%.3g) to factorise",
                            damp, dampening)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        damp = damp * 10 if damp > 0 else 1e-6
    raise RuntimeError(f"sparsegpt: the Hessian cannot be factorised even with dampening {damp:.3g}")


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean tensor of ``scores``' shape marking its ``k`` lowest entries (ties: first position)."""
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        chosen[torch.topk(scores.flatten(), k, largest=False, sorted=False).indices] = True
    return chosen.view_as(scores)


def sparsegpt_sweep(weight: torch.Tensor, h: torch.Tensor, n_zeros: int, *, pattern: Pattern | None = None,
                    block_size: int = 128, dampening: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (float32 ``(groups, rows, columns)``) given its Hessian ``h``
    (``(groups, columns, columns)``): returns the updated weight (pruned entries exactly zero) and the
    boolean mask of pruned entries, ``n_zeros`` of them (unstructured) or ``m - n`` per group of
    ``m`` columns (``pattern=(n, m)``). The module's docstring describes the rule."""
    groups, rows, columns = weight.shape
    u = inverse_cholesky(h, dampening)
    dead = h.diagonal(dim1=-2, dim2=-1) == 0  # (groups, columns)
    w = weight.clone()
    pruned = torch.zeros_like(w, dtype=torch.bool)
    if pattern is not None:
        m = pattern[1]
        block_size = -(-block_size // m) * m  # a group of m columns never straddles two blocks

    def saliency(values: torch.Tensor, u_diag: torch.Tensor, is_dead: torch.Tensor) -> torch.Tensor:
        return (values ** 2 / u_diag.unsqueeze(1) ** 2).masked_fill(is_dead.unsqueeze(1), 0.0)

    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        w_block, pruned_block = w[..., start:end], pruned[..., start:end]  # views: updated in place
        u_block = u[:, start:end, start:end]
        u_diag = u_block.diagonal(dim1=-2, dim2=-1)  # (groups, block)
        dead_block = dead[:, start:end]
        if pattern is None:
            quota = (n_zeros * end + columns // 2) // columns - (n_zeros * start + columns // 2) // columns
            pruned_block.copy_(_lowest(saliency(w_block, u_diag, dead_block), quota))
        errors = torch.zeros_like(w_block)
        for j in range(end - start):
            if pattern is not None and j % pattern[1] == 0:
                n, m = pattern
                scores = saliency(w_block[..., j:j + m], u_diag[:, j:j + m], dead_block[:, j:j + m])
                drop = torch.topk(scores, m - n, dim=-1, largest=False).indices
                pruned_block[..., j:j + m].scatter_(-1, drop, True)
            # OBS: removing w_j moves the later weights of the block by -(w_j / U_jj) U_j,later
            err = torch.where(pruned_block[..., j], w_block[..., j], 0.0) / u_diag[:, j:j + 1]
            w_block[..., j + 1:] -= err.unsqueeze(-1) * u_block[:, j, j + 1:].unsqueeze(1)
            w_block[..., j].masked_fill_(pruned_block[..., j], 0.0)
            errors[..., j] = err
        if end < columns:
            w[..., end:] -= errors @ u[:, start:end, end:]
    return w, pruned


def output_error(weight: torch.Tensor, new_weight: torch.Tensor, h: torch.Tensor) -> float:
    """The relative squared error of the layer's pre-bias outputs on the calibration inputs,
    ``‖(W' - W) X‖² / ‖W X‖²``, from the Hessian (exact: ``H`` is ``2 X Xᵀ / n``)."""
    delta = new_weight - weight
    err = (delta @ h * delta).sum()
    ref = (weight @ h * weight).sum()
    return float(err / ref) if ref > 0 else 0.0


# --------------------------------------------------------------------------- one layer, the network


def _prune_layer(layer: MaskedLayer, inputs: list[torch.Tensor], n_zeros: int, cfg: SparseGPTConfig) -> dict:
    pattern = layer.nm if layer.nm is not None and is_eligible(layer.weight, layer.nm[1]) else None
    if n_zeros == 0:  # nothing to prune (or a layer its N:M pattern leaves dense): the weights stay
        layer.mask.fill_(1)
        return {"output_error": 0.0}
    h = hessian(layer, inputs)
    weight = weight_matrices(layer)
    new_weight, pruned = sparsegpt_sweep(weight, h, n_zeros, pattern=pattern, block_size=cfg.block_size,
                                         dampening=cfg.dampening)
    layer.weight.copy_(new_weight.view_as(layer.weight))
    layer.mask.copy_((~pruned).view_as(layer.mask))
    return {"output_error": output_error(weight, new_weight, h)}


def sparsegpt_prune_(
    student: nn.Module,
    target: float,
    batches: Iterable,
    config: SparseGPTConfig | Mapping[str, Any] | None = None,
    *,
    allocation: str = "uniform",
    allocation_options: Mapping[str, Any] | None = None,
    bn_recalibrate: bool = False,
    dense: nn.Module | None = None,
    **overrides,
) -> dict:
    """SparseGPT on ``student`` in place: allocation, then every masked layer pruned with its OBS update.

    ``student`` is a sparsified (:func:`unipts.sparse.sparsify`) network still holding its dense
    weights; ``batches`` yields calibration images (tensors, or ``(images, labels)`` pairs), read
    once and kept. The per-layer zero counts come from ``allocation`` (a rule of
    :func:`unipts.sparse.allocate`, with ``allocation_options``; under an N:M pattern the pattern's),
    and every layer ends with exactly its count: ``round(target * N)`` zeros over the masked layers.
    Settings: :class:`SparseGPTConfig` (``config`` and/or keyword overrides); ``dense``, the network
    ``student`` was sparsified from, is needed only with ``inputs="dense"``. The network runs in
    eval mode and gets its mode back; the masks are folded (pruned weights are zero).
    ``bn_recalibrate`` re-estimates BatchNorm statistics on the batches at the end. Returns a
    summary with one record per layer (``output_error``: the relative squared error of the layer's
    outputs on its calibration inputs).
    """
    cfg = SparseGPTConfig.build(config, **overrides)
    summary = prune_layerwise_(student, target, batches, lambda layer, xs, k: _prune_layer(layer, xs, k, cfg),
                               label="sparsegpt", engine=cfg.engine, inputs=cfg.inputs, dense=dense,
                               allocation=allocation, allocation_options=allocation_options,
                               bn_recalibrate=bn_recalibrate)
    return {"config": asdict(cfg), **summary}
