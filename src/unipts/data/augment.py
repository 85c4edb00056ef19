"""Batched train augmentation on tensors: random crop with zero padding, horizontal flip."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class BatchAugment(nn.Module):
    """Random ``pad``-pixel translation and optional horizontal flip, per image, on a whole batch.

    Working on batches keeps data loading free of per-image Python transforms, which matters
    on a 2-core machine where the network itself is small.
    """

    def __init__(self, pad: int = 0, flip: bool = False) -> None:
        super().__init__()
        self.pad = pad
        self.flip = flip

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch; random draws come from ``generator`` (on ``x``'s device) when given,
        else from the global generator."""
        b, _, h, w = x.shape
        g = {"generator": generator} if generator is not None else {}
        if self.pad:
            padded = F.pad(x, (self.pad,) * 4)
            dy = torch.randint(0, 2 * self.pad + 1, (b,), device=x.device, **g)
            dx = torch.randint(0, 2 * self.pad + 1, (b,), device=x.device, **g)
            rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
            batch = torch.arange(b, device=x.device)[:, None, None, None]
            chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]
        if self.flip:
            flip = torch.rand(b, device=x.device, **g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def extra_repr(self) -> str:
        return f"pad={self.pad}, flip={self.flip}"
