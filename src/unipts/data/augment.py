"""Batched train augmentation on tensors: random crop with zero padding, horizontal flip; and, for
distillation only, random-resized crops and mixing between the images of a batch."""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def _draws_from(generator: torch.Generator | None) -> dict:
    """Keyword arguments that make torch's random functions draw from ``generator`` (none: the global one)."""
    return {"generator": generator} if generator is not None else {}


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
        g = _draws_from(generator)
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


MIX_MODES = ("none", "mixup", "cutmix")


class MixImages(nn.Module):
    """Mix each image of a batch with another image of the same batch (mixup: a convex blend;
    cutmix: a pasted rectangle), for distillation without labels.

    The teacher labels whatever the student sees, so no label needs mixing: every mixed image
    is a new input on which the student can match the teacher, and a small calibration set goes
    further. The mixing weight is drawn per image from Beta(``alpha``, ``alpha``); each image is
    mixed with probability ``prob``, and none once ``progress`` (the fraction of the training done)
    reaches ``until``, so that the last epochs can show the student the images as they are.
    """

    def __init__(self, mode: str = "mixup", alpha: float = 1.0, prob: float = 1.0, until: float = 1.0) -> None:
        super().__init__()
        if mode not in MIX_MODES:
            raise ValueError(f"mix mode {mode!r} is not one of {list(MIX_MODES)}")
        if alpha <= 0:
            raise ValueError(f"mix alpha must be > 0, got {alpha}")
        self.mode, self.alpha, self.prob, self.until = mode, float(alpha), float(prob), float(until)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, progress: float = 0.0) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "none" or b < 2 or progress >= self.until:
            return x
        g = _draws_from(generator)
        partner = torch.randperm(b, device=x.device, **g)
        if self.prob < 1:  # an image left unmixed is mixed with itself
            unmixed = torch.rand(b, device=x.device, **g) >= self.prob
            partner = torch.where(unmixed, torch.arange(b, device=x.device), partner)
        # Beta(a, a) as a ratio of Gammas: torch's Beta sampler takes no generator.
        shape = torch.full((b,), self.alpha, device=x.device)
        g1, g2 = torch._standard_gamma(shape, **g), torch._standard_gamma(shape, **g)
        lam = g1 / (g1 + g2)
        if self.mode == "mixup":
            lam = lam.to(x.dtype).view(b, 1, 1, 1)
            return lam * x + (1 - lam) * x[partner]
        return self._cutmix(x, partner, lam, g)

    @staticmethod
    def _cutmix(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, g: dict) -> torch.Tensor:
        """Paste a rectangle of area ``1 - lam`` of the partner image at a random centre."""
        b, _, h, w = x.shape
        cut = torch.sqrt(1 - lam)
        ch, cw = (cut * h).long(), (cut * w).long()
        cy = torch.randint(0, h, (b,), device=x.device, **g)
        cx = torch.randint(0, w, (b,), device=x.device, **g)
        y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch - ch // 2).clamp(0, h)
        x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw - cw // 2).clamp(0, w)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((rows >= y0.view(b, 1, 1)) & (rows < y1.view(b, 1, 1))
                  & (cols >= x0.view(b, 1, 1)) & (cols < x1.view(b, 1, 1)))
        return torch.where(inside.unsqueeze(1), x[partner], x)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, alpha={self.alpha}, prob={self.prob}, until={self.until}"


class ResizedCrops(nn.Module):
    """Show each image of a batch through a random rectangle of it, stretched back to full size
    (bilinear): the rectangle covers a fraction of the image drawn uniformly from ``[min_area, 1]``,
    with a width-to-height ratio drawn log-uniformly from [3/4, 4/3], at a random place inside it.

    For distillation: the teacher labels whatever the student sees, so a crop needs no label to
    stay right, and a small calibration set shows the student far more distinct inputs.
    """

    def __init__(self, min_area: float) -> None:
        super().__init__()
        if not 0 < min_area <= 1:
            raise ValueError(f"crop min_area must be in (0, 1], got {min_area}")
        self.min_area = float(min_area)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, progress: float = 0.0) -> torch.Tensor:
        b = x.shape[0]
        g = _draws_from(generator)
        area = self.min_area + (1 - self.min_area) * torch.rand(b, device=x.device, **g)
        log_ratio = (2 * torch.rand(b, device=x.device, **g) - 1) * math.log(4 / 3)
        # the rectangle's width and height as fractions of the image's, at most the whole image
        width = (area * log_ratio.exp()).sqrt().clamp(max=1)
        height = (area / log_ratio.exp()).sqrt().clamp(max=1)
        # its centre in affine_grid's [-1, 1] coordinates, so that it stays inside the image
        cx = (2 * torch.rand(b, device=x.device, **g) - 1) * (1 - width)
        cy = (2 * torch.rand(b, device=x.device, **g) - 1) * (1 - height)
        zero = torch.zeros_like(width)
        theta = torch.stack([torch.stack([width, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def extra_repr(self) -> str:
        return f"min_area={self.min_area}"


class DistillAugment(nn.Module):
    """The distillation-only augmentations in order (crops, then mixing), each drawing from the
    same generator and told the fraction of the training done (``progress``)."""

    def __init__(self, *steps: nn.Module) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, progress: float = 0.0) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator, progress)
        return x


def distill_augment(settings) -> DistillAugment | None:
    """The distillation-time augmentation ``settings`` (a ``finetune`` section) ask for:
    ``crop_min_area``'s random-resized crops, then ``mix``'s mixing (None when both are off)."""
    steps = []
    if settings.crop_min_area is not None:
        steps.append(ResizedCrops(settings.crop_min_area))
    if settings.mixes:
        steps.append(MixImages(settings.mix, settings.mix_alpha, settings.mix_prob, settings.mix_until))
    return DistillAugment(*steps) if steps else None
