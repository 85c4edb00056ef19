"""Wanda (Sun et al., 2023): prune by weight magnitude times input-feature norm, no weight update.

Per masked layer, in forward order, on its inputs from the network pruned so far (as the
reference does block by block): the score of weight ``W_ij`` is ``|W_ij| · ‖X_j‖₂``, ``‖X_j‖₂``
being the L2 norm of input feature ``j`` over every input vector the calibration images give (a
convolution's inputs unfolded with its kernel, stride, padding and dilation; a grouped or
depthwise convolution's features are its own group's). Scores are compared within each output
unit (row): a feature that is large on the calibration images protects its weights in every row.

Exactness. A layer with ``k`` zeros over ``R`` rows prunes ``k // R`` lowest scores in every row;
the remaining ``k mod R`` zeros go one each to the rows whose next candidate (their
``k // R + 1``-th lowest score) is lowest over the layer, ties to the first rows. So rows differ by
at most one pruned weight and the layer's count is exact.

N:M. A layer with a pattern ``(n, m)`` keeps the ``n`` highest scores of every group of ``m``
consecutive inputs of each row (:func:`unipts.sparse.nm_mask` on the scores); a layer that
cannot carry the pattern is left dense.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..sparse.masked import MaskedLayer
from ..sparse.pattern import is_eligible, nm_mask
from .columns import input_columns, weight_matrices
from .layerwise import ENGINES, INPUTS
from .oneshot import prune_layerwise_
from .settings import Settings


@dataclass(frozen=True)
class WandaConfig(Settings):
    """Wanda's settings: the network the feature norms come from (``inputs``: ``"sparse"``, the
    network pruned so far, or ``"dense"``, which needs the dense network) and the walk's ``engine``
    (see :mod:`unipts.baselines.layerwise`)."""

    inputs: str = "sparse"
    engine: str = "auto"

    KEY: ClassVar[str] = "wanda"

    def __post_init__(self) -> None:
        self.check_choice("inputs", INPUTS)
        self.check_choice("engine", ENGINES)


def feature_norms(layer: nn.Module, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """``‖X_j‖₂`` of every input feature over all batches, float32 ``(groups, columns)``."""
    total = None
    for x in inputs:
        squares = input_columns(layer, x).square().sum(-1)
        total = squares if total is None else total.add_(squares)
    return total.sqrt()


def row_balanced_mask(scores: torch.Tensor, n_zeros: int) -> torch.Tensor:
    """The boolean mask of pruned entries of ``scores`` (``(rows, columns)``): ``n_zeros`` of them,
    the lowest of each row, spread over the rows as the module's docstring says."""
    rows, columns = scores.shape
    per_row, extra = divmod(n_zeros, rows)
    order = torch.sort(scores, dim=1, stable=True).indices  # ties: first position first
    prune_count = torch.full((rows,), per_row, device=scores.device)
    if extra:
        next_candidate = scores.gather(1, order[:, per_row:per_row + 1]).squeeze(1)
        lucky = torch.sort(next_candidate, stable=True).indices[:extra]
        prune_count[lucky] += 1
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(columns, device=scores.device).expand(rows, columns))
    return ranks < prune_count.unsqueeze(1)


def wanda_scores(layer: nn.Module, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """``|W| · ‖X_j‖₂`` in the layer's weight layout ``(out, -1)``."""
    scores = weight_matrices(layer).abs() * feature_norms(layer, inputs).unsqueeze(1)
    return scores.reshape(layer.weight.shape[0], -1)


def _prune_layer(layer: MaskedLayer, inputs: list[torch.Tensor], n_zeros: int) -> dict:
    if n_zeros == 0:  # nothing to prune (or a layer its N:M pattern leaves dense)
        layer.mask.fill_(1)
        return {}
    scores = wanda_scores(layer, inputs)
    if layer.nm is not None and is_eligible(layer.weight, layer.nm[1]):
        keep = nm_mask(scores, *layer.nm).bool()
    else:
        keep = ~row_balanced_mask(scores, n_zeros)
    layer.mask.copy_(keep.view_as(layer.mask))
    return {}


def wanda_prune_(
    student: nn.Module,
    target: float,
    batches: Iterable,
    config: WandaConfig | Mapping[str, Any] | None = None,
    *,
    allocation: str = "uniform",
    allocation_options: Mapping[str, Any] | None = None,
    bn_recalibrate: bool = False,
    dense: nn.Module | None = None,
    **overrides,
) -> dict:
    """Wanda on ``student`` in place: allocation, then every masked layer's mask from its Wanda scores.

    As :func:`unipts.baselines.sparsegpt_prune_`, without the weight update: ``student`` a
    sparsified network with its dense weights, ``batches`` the calibration images, exact per-layer
    counts from ``allocation`` (the reference's is uniform), settings :class:`WandaConfig` (``dense``
    needed only with ``inputs="dense"``), masks folded at the end, the network's mode restored,
    BatchNorm re-estimated with ``bn_recalibrate``.
    Returns a summary with one record per layer.
    """
    cfg = WandaConfig.build(config, **overrides)
    summary = prune_layerwise_(student, target, batches, _prune_layer, label="wanda", engine=cfg.engine,
                               inputs=cfg.inputs, dense=dense, allocation=allocation,
                               allocation_options=allocation_options, bn_recalibrate=bn_recalibrate)
    return {"config": asdict(cfg), **summary}
