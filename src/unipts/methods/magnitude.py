"""One-shot magnitude pruning with a fixed allocation."""

from __future__ import annotations

from dataclasses import dataclass

from .unipts import UniPTS


@dataclass
class Magnitude(UniPTS):
    """Each layer loses its smallest weights, in the numbers a fixed ``allocation`` rule gives
    (the preset: uniform), then BatchNorm statistics are re-estimated on the calibration images.
    No training; ``method.finetune=true`` distils the student as :class:`UniPTS` does."""

    finetune: bool = False
    bn_recalibrate: bool = True
