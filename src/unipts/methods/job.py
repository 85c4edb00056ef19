"""What every part of a method works on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from ..lightning import CalibrationDataModule
    from ..spec import PruneSpec


@dataclass
class Job:
    """The run's spec and directory, the dense network, the student (its masked copy, dense until
    the method gives it masks) and the calibration data."""

    spec: PruneSpec
    run_dir: Path
    dense: nn.Module
    student: nn.Module
    data: CalibrationDataModule
    num_classes: int
