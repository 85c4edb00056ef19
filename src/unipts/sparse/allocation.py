"""Allocation rules: how many weights each layer loses so that the global sparsity is exact.

Every rule returns ``{layer name: number of pruned weights}`` whose sum is
``round(target * N)``, N being the number of weights over all masked layers; masks are then
taken by magnitude within each layer (:func:`unipts.sparse.masks.set_masks_`). Score-based
rules (global magnitude, LAMP, POT's L2-normalised magnitude) only decide the per-layer counts:
their scores are monotone in magnitude within a layer, so the per-layer magnitude mask is the
mask the global ranking would give.

Under an N:M pattern (:mod:`unipts.sparse.nm`) there is one feasible allocation, ``1 - N/M`` in
every layer that can carry the pattern and 0 in the others, so :func:`allocate` returns it
whatever the rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .masked import masked_layers
from .nm import format_pattern, model_pattern, nm_allocation

log = logging.getLogger(__name__)

Allocation = dict[str, int]


def _check_target(target: float) -> None:
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity {target} is outside [0, 1)")


def layer_numels(model: nn.Module) -> dict[str, int]:
    return {name: layer.weight.numel() for name, layer in masked_layers(model)}


def total_zeros(numels: Mapping[str, int], target: float) -> int:
    return round(target * sum(numels.values()))


def round_to_total(desired: Mapping[str, float], numels: Mapping[str, int], total: int) -> Allocation:
    """Integer zero counts near ``desired`` (each within [0, numel]) that sum exactly to ``total``.

    Largest-remainder rounding; any shortfall left by layers at their bounds goes to the layers
    that still have room, in order of their fractional parts.
    """
    capacity = sum(numels.values())
    if not 0 <= total <= capacity:
        raise ValueError(f"cannot prune {total} of {capacity} weights")
    clipped = {k: min(max(float(v), 0.0), numels[k]) for k, v in desired.items()}
    counts = {k: math.floor(v) for k, v in clipped.items()}
    by_fraction = sorted(clipped, key=lambda k: clipped[k] - counts[k], reverse=True)
    gap = total - sum(counts.values())
    while gap != 0:
        step = 1 if gap > 0 else -1
        order = by_fraction if step > 0 else by_fraction[::-1]
        moved = False
        for k in order:
            if gap == 0:
                break
            if 0 <= counts[k] + step <= numels[k]:
                counts[k] += step
                gap -= step
                moved = True
        if not moved:  # pragma: no cover - guarded by the capacity check above
            raise RuntimeError("rounding could not reach the total")
    return counts


def uniform(model: nn.Module, target: float) -> Allocation:
    """Every layer at the target sparsity (up to one weight, to make the global count exact)."""
    _check_target(target)
    numels = layer_numels(model)
    return round_to_total({k: target * n for k, n in numels.items()}, numels, total_zeros(numels, target))


def by_global_score(scores: Mapping[str, torch.Tensor], target: float) -> Allocation:
    """Prune the ``round(target * N)`` lowest scores across all layers; return per-layer counts."""
    _check_target(target)
    names = list(scores)
    numels = {k: scores[k].numel() for k in names}
    k = total_zeros(numels, target)
    flat = torch.cat([scores[name].detach().flatten().float().cpu() for name in names])
    owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor([numels[n] for n in names]))
    lowest = torch.sort(flat, stable=True).indices[:k]
    counts = torch.bincount(owner[lowest], minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts)}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight.detach() for name, layer in masked_layers(model)}


def global_magnitude(model: nn.Module, target: float) -> Allocation:
    return by_global_score({k: w.abs() for k, w in _weights(model).items()}, target)


def l2norm(model: nn.Module, target: float) -> Allocation:
    """POT's rule: global magnitude on weights divided by their layer's L2 norm."""
    return by_global_score({k: w.abs() / w.norm().clamp_min(1e-12) for k, w in _weights(model).items()}, target)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score (Lee et al., 2021): w^2 over the sum of w'^2 of all weights at least as large."""
    sq = weight.detach().flatten().double() ** 2
    order = torch.argsort(sq, stable=True)
    sorted_sq = sq[order]
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    scores = torch.empty_like(sq)
    scores[order] = sorted_sq / suffix.clamp_min(1e-300)
    return scores.view_as(weight)


def lamp(model: nn.Module, target: float) -> Allocation:
    return by_global_score({k: lamp_scores(w) for k, w in _weights(model).items()}, target)


def erk(model: nn.Module, target: float, power_scale: float = 1.0) -> Allocation:
    """Erdos-Renyi-Kernel densities (Evci et al., 2020): density ~ sum(shape) / prod(shape).

    Layers whose density would exceed 1 are kept dense and the rest re-scaled, until none does.
    """
    _check_target(target)
    weights = _weights(model)
    numels = {k: w.numel() for k, w in weights.items()}
    raw = {k: (sum(w.shape) / w.numel()) ** power_scale for k, w in weights.items()}
    budget = (1.0 - target) * sum(numels.values())
    dense: set[str] = set()
    while True:
        sparse_names = [k for k in weights if k not in dense]
        remaining = budget - sum(numels[k] for k in dense)
        denom = sum(raw[k] * numels[k] for k in sparse_names)
        eps = remaining / denom if denom else 0.0
        too_dense = [k for k in sparse_names if eps * raw[k] > 1.0]
        if not too_dense:
            break
        dense.update(too_dense)
    density = {k: 1.0 if k in dense else eps * raw[k] for k in weights}
    desired = {k: (1.0 - density[k]) * numels[k] for k in weights}
    return round_to_total(desired, numels, total_zeros(numels, target))


def regrow_decode(
    numels: Mapping[str, int], target: float, delta: float, genes: Sequence[float] | torch.Tensor | None = None,
    clip_overshoot: bool = False,
) -> Allocation:
    """UniPTS's reducing-regrowing decode (method.md section 2) with an exact global sparsity.

    Every layer is first pruned to ``P_e = P + delta``; a budget of ``delta * N`` weights is then
    regrown, layer ``l`` receiving the share ``softmax(genes)_l``. A layer cannot regrow more than
    it pruned: the released code clips at zero sparsity and loses the excess (the achieved
    sparsity overshoots ``P``); here the excess is handed to the other layers in proportion to
    their shares until none is over, so the total is exact. ``clip_overshoot=True`` gives the
    released behaviour. ``genes=None`` is the all-equal vector. ``delta`` is capped at ``1 - P``.
    """
    _check_target(target)
    names = list(numels)
    n = torch.tensor([numels[k] for k in names], dtype=torch.float64)
    g = torch.zeros(len(names), dtype=torch.float64) if genes is None else torch.as_tensor(genes, dtype=torch.float64)
    if g.shape != (len(names),):
        raise ValueError(f"expected {len(names)} genes, got shape {tuple(g.shape)}")
    delta = min(delta, 1.0 - target)
    p_e = target + delta
    share = torch.softmax(g, 0)
    capacity = p_e * n  # the most a layer can regrow: everything it pruned
    budget = delta * float(n.sum())
    if clip_overshoot:
        regrown = torch.minimum(budget * share, capacity)
        desired = {k: float(v) for k, v in zip(names, p_e * n - regrown)}
        return round_to_total(desired, numels, round(float(sum(desired.values()))))
    regrown = torch.zeros_like(n)
    open_ = torch.ones(len(names), dtype=torch.bool)
    while True:
        left = budget - float(regrown.sum())
        if left <= 1e-9 or not open_.any():
            break
        s = torch.where(open_, share, torch.zeros_like(share))
        proposal = regrown + left * s / s.sum()
        over = open_ & (proposal >= capacity)
        if not over.any():
            regrown = proposal
            break
        regrown = torch.where(over, capacity, regrown)
        open_ &= ~over
    desired = {k: float(v) for k, v in zip(names, p_e * n - regrown)}
    return round_to_total(desired, numels, total_zeros(numels, target))


def regrow(model: nn.Module, target: float, delta: float = 0.05, genes=None) -> Allocation:
    return regrow_decode(layer_numels(model), target, delta, genes)


def read_table(path: str | Path) -> dict[str, float]:
    """A per-layer sparsity table: a YAML mapping of layer name to sparsity (or ``{layers: ...}``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"allocation.path: no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"allocation.path: {path} is not a YAML file ({str(exc).splitlines()[0]}); "
                         "valid: a mapping of layer name to sparsity, e.g. a search's sparsity_table.yaml") from exc
    if isinstance(data, dict) and isinstance(data.get("layers"), dict):
        data = data["layers"]
    if not isinstance(data, dict):
        raise ValueError(f"allocation.path: {path} is not a mapping of layer name to sparsity")
    # YAML reads yes/true as booleans, which Python would take for 1 and 0
    not_numbers = {str(k): v for k, v in data.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
    if not_numbers:
        raise ValueError(f"allocation.path: {path}: not a number: {not_numbers}; each layer's sparsity is a number "
                         "in [0, 1)")
    return {str(k): float(v) for k, v in data.items()}


def table(model: nn.Module, target: float, path: str | Path, tolerance: float = 1e-3) -> Allocation:
    """Per-layer sparsities read from a file; their global sparsity must match ``target``."""
    numels = layer_numels(model)
    sparsities = read_table(path)
    missing, unknown = sorted(set(numels) - set(sparsities)), sorted(set(sparsities) - set(numels))
    if missing or unknown:
        raise ValueError(f"allocation.path: {path} does not fit the model: missing layers {missing}, unknown {unknown}")
    bad = {k: v for k, v in sparsities.items() if not 0.0 <= v < 1.0}  # NaN fails the comparison too
    if bad:
        raise ValueError(f"allocation.path: {path}: sparsities must lie in [0, 1) (at 1.0 a layer keeps no weight "
                         f"and the network's output no longer depends on its input), got {bad}")
    counts = {k: round(sparsities[k] * numels[k]) for k in numels}
    achieved = sum(counts.values()) / sum(numels.values())
    if abs(achieved - target) > tolerance:
        raise ValueError(
            f"allocation.path: the table's global sparsity is {achieved:.4f} but sparsity.target is {target}; "
            "set sparsity.target to match the table"
        )
    return counts


RULES: dict[str, Callable[..., Allocation]] = {
    "uniform": uniform,
    "global": global_magnitude,
    "erk": erk,
    "lamp": lamp,
    "l2norm": l2norm,
    "regrow": regrow,
    "table": table,
}


def allocate(model: nn.Module, rule: str, target: float, **options) -> Allocation:
    """Per-layer zero counts from the named rule (one of :data:`RULES`).

    When the model's masked layers carry an N:M pattern the rule has no choice to make: the
    result is :func:`unipts.sparse.nm.nm_allocation` (``target`` must be ``1 - N/M``)."""
    if rule not in RULES:
        raise ValueError(f"allocation.rule: unknown rule {rule!r}; valid: {sorted(RULES)}")
    pattern = model_pattern(model)
    if pattern is not None:
        counts = nm_allocation(model, target)
        log.info("allocation: sparsity.pattern=%s fixes every layer's sparsity, so the allocation rule has no "
                 "choice to make", format_pattern(pattern))
        return counts
    return RULES[rule](model, target, **options)
