"""Calibration images held compactly for the search: one byte per pixel value.

The search passes the same calibration images through the network hundreds of times, so they are
decoded once and kept. As float32 that is 0.6 MB per 224 px image (6 GB for the paper's 10,240);
here each image channel is kept as uint8 codes with its own offset and step (an affine
quantisation of whatever the data pipeline produced, normalised or not), and batches are turned
back into floats on the device that runs the network. Pixels that were 8-bit to begin with and
went through a per-channel affine normalisation come back within half a code step of the
original value: below the JPEG noise of the images themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset

LEVELS = 255


class CompactImages:
    """Images ``[N, C, ...]`` as uint8 codes plus a per-(image, channel) offset and step."""

    def __init__(self, codes: torch.Tensor, low: torch.Tensor, step: torch.Tensor) -> None:
        self.codes, self.low, self.step = codes, low, step

    @classmethod
    def from_batches(cls, batches: Iterable[torch.Tensor]) -> CompactImages:
        codes, lows, steps = [], [], []
        for x in batches:
            c, low, step = _quantise(x)
            codes.append(c)
            lows.append(low)
            steps.append(step)
        if not codes:
            raise ValueError("no images to keep")
        return cls(torch.cat(codes), torch.cat(lows), torch.cat(steps))

    @classmethod
    def from_tensor(cls, images: torch.Tensor, chunk: int = 256) -> CompactImages:
        return cls.from_batches(torch.split(images, chunk))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, part: slice) -> CompactImages:
        if not isinstance(part, slice):
            raise TypeError("CompactImages take slices only")
        return CompactImages(self.codes[part], self.low[part], self.step[part])

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.low, self.step))

    def to(self, device: torch.device | str) -> CompactImages:
        """The codes moved to ``device``: a GPU then holds one byte per pixel value, not four."""
        return CompactImages(self.codes.to(device), self.low.to(device), self.step.to(device))

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Float32 batches on the codes' device, in order."""
        size = batch_size if batch_size and batch_size > 0 else len(self)
        for start in range(0, len(self), size):
            yield self.decode(slice(start, start + size))

    def decode(self, part: slice = slice(None)) -> torch.Tensor:
        codes = self.codes[part]
        shape = (codes.shape[0], codes.shape[1]) + (1,) * (codes.dim() - 2)
        return codes.float() * self.step[part].view(shape) + self.low[part].view(shape)


def _quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = x.detach().float().flatten(2)  # [N, C, pixels]
    low = flat.amin(2)
    step = (flat.amax(2) - low) / LEVELS
    step = torch.where(step > 0, step, torch.ones_like(step))  # a flat channel: every code 0
    codes = ((flat - low.unsqueeze(2)) / step.unsqueeze(2)).round_().clamp_(0, LEVELS).to(torch.uint8)
    return codes.view(x.shape), low, step


def first_batches(dataset: Dataset, n: int | None, batch_size: int, num_workers: int,
                  labels: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The images of the first ``n`` (all if None) ``(image, label)`` pairs of ``dataset``, in
    batches decoded by ``num_workers`` loader processes; each batch's labels go to ``labels``."""
    total = len(dataset)
    n = total if n is None else n
    if not 0 < n <= total:
        raise ValueError(f"cannot take {n} images from a set of {total}")
    subset = Subset(dataset, range(n)) if n < total else dataset
    for x, y in DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        labels.append(torch.as_tensor(y))
        yield x


def keep_images(dataset: Dataset, n: int | None = None, batch_size: int = 256,
                num_workers: int = 0) -> tuple[CompactImages, torch.Tensor]:
    """The first ``n`` (all if None) ``(image, label)`` pairs of ``dataset``, decoded once and
    kept compactly: images and labels."""
    labels: list[torch.Tensor] = []
    kept = CompactImages.from_batches(first_batches(dataset, n, batch_size, num_workers, labels))
    return kept, torch.cat(labels).long()
