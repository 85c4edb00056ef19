"""The calibration subset: distinct training images drawn from a seeded generator."""

from __future__ import annotations

import torch


def calibration_indices(labels: torch.Tensor, size: int, seed: int, balanced: bool = False) -> list[int]:
    """``size`` distinct indices into a training set, reproducible from ``seed``.

    ``balanced`` draws as equal a number of images per class as the classes allow (the
    remainder goes to randomly chosen classes), instead of a plain uniform draw.
    """
    n = len(labels)
    if not 1 <= size <= n:
        raise ValueError(f"calib.size: {size} is outside [1, {n}] (the training split has {n} images)")
    gen = torch.Generator().manual_seed(seed)
    if not balanced:
        return torch.randperm(n, generator=gen)[:size].tolist()
    classes = torch.unique(labels)
    pools = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
    pools = {c: p[torch.randperm(len(p), generator=gen)] for c, p in pools.items()}
    quota = {c: 0 for c in pools}
    left = size
    while left:
        open_classes = [c for c in pools if quota[c] < len(pools[c])]
        per_class, extra = divmod(left, len(open_classes))
        lucky = set(torch.tensor(open_classes)[torch.randperm(len(open_classes), generator=gen)[:extra]].tolist())
        for c in open_classes:
            take = min(per_class + (c in lucky), len(pools[c]) - quota[c])
            quota[c] += take
            left -= take
    chosen = torch.cat([pools[c][: quota[c]] for c in pools])
    return chosen[torch.randperm(len(chosen), generator=gen)].tolist()
