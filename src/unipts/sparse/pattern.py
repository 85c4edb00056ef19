"""N:M patterns on tensors: parsing ``"N:M"``, eligibility and the N:M magnitude mask.

Plain tensor arithmetic, below the masked layers (:mod:`.masked` imports it); what a pattern does
to a whole model is :mod:`.nm`. The layout and eligibility rules are described there.
"""

from __future__ import annotations

import re

import torch

Pattern = tuple[int, int]

#: How far ``sparsity.target`` may lie from ``1 - N/M`` (so that 1:3 can be written 0.6667).
TARGET_TOLERANCE = 5e-4

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
VALID_FORMS = "'unstructured' or 'N:M' with 1 <= N < M (e.g. '2:4', '1:4')"


def parse_pattern(value) -> Pattern | None:
    """``None`` for unstructured (``None`` or ``"unstructured"``), else ``(n, m)`` from ``"N:M"``
    or a pair of integers. Raises :class:`ValueError` naming the valid forms."""
    if value is None or value == "unstructured":
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        n, m = value
    elif isinstance(value, str) and _PATTERN_RE.match(value):
        n, m = (int(g) for g in _PATTERN_RE.match(value).groups())
    else:
        hint = ""
        if isinstance(value, int) and not isinstance(value, bool):
            hint = " (an unquoted N:M in a YAML file is read as a base-60 number: write pattern: \"2:4\")"
        raise ValueError(f"{value!r} is not a sparsity pattern{hint}; valid: {VALID_FORMS}")
    if not 1 <= n < m:
        raise ValueError(f"{n}:{m} is not a sparsity pattern (need 1 <= N < M); valid: {VALID_FORMS}")
    return int(n), int(m)


def format_pattern(pattern: Pattern | None) -> str:
    return "unstructured" if pattern is None else f"{pattern[0]}:{pattern[1]}"


def pattern_sparsity(pattern: Pattern) -> float:
    """The sparsity of every eligible layer: ``1 - N/M``."""
    n, m = pattern
    return 1.0 - n / m


def check_target(target: float, pattern: Pattern) -> None:
    """``target`` must be ``1 - N/M`` (within :data:`TARGET_TOLERANCE`): the pattern fixes it."""
    fixed = pattern_sparsity(pattern)
    if abs(float(target) - fixed) > TARGET_TOLERANCE:
        raise ValueError(
            f"sparsity.target: {target} does not match sparsity.pattern={format_pattern(pattern)}, which fixes "
            f"every layer's sparsity at 1 - {pattern[0]}/{pattern[1]} = {fixed:.6g}; valid: sparsity.target={fixed:.6g}"
        )


# -- tensors ----------------------------------------------------------------------------------
def row_length(weight: torch.Tensor) -> int:
    """Inputs per output unit: the length of ``weight.view(out, -1)``'s rows."""
    return weight.numel() // weight.shape[0] if weight.dim() > 1 else weight.numel()


def is_eligible(weight: torch.Tensor, m: int) -> bool:
    """Whether ``weight``'s rows split into whole groups of ``m``."""
    return weight.numel() > 0 and row_length(weight) % m == 0


def fixed_zeros(weight: torch.Tensor, pattern: Pattern) -> int:
    """The number of pruned weights the pattern gives a layer (0 for an ineligible one)."""
    n, m = pattern
    return weight.numel() // m * (m - n) if is_eligible(weight, m) else 0


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """A 0/1 mask of ``weight``'s shape and dtype keeping the ``n`` largest magnitudes of every
    group of ``m`` consecutive weights along each output unit's flattened input (one topk over
    all groups at once). ``weight`` must be eligible (:func:`is_eligible`)."""
    if not is_eligible(weight, m):
        raise ValueError(f"a weight of shape {tuple(weight.shape)} has {row_length(weight)} inputs per output, "
                         f"not a multiple of {m}: it cannot carry an {n}:{m} pattern")
    groups = weight.detach().abs().reshape(-1, m)
    keep = torch.topk(groups, n, dim=1, sorted=False).indices
    mask = torch.zeros(groups.shape, dtype=weight.dtype, device=weight.device)
    mask.scatter_(1, keep, 1)
    return mask.view_as(weight)


def violations(tensor: torch.Tensor, n: int, m: int) -> int:
    """The number of groups of ``m`` (in :func:`nm_mask`'s layout) with more than ``n`` nonzeros."""
    return int(((tensor.detach().reshape(-1, m) != 0).sum(1) > n).sum())
