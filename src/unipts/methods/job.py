"""What every part of a method works on at run time: objects, not the run spec. The spec is read
once, when the run is assembled (:mod:`unipts.pipeline.inputs`); a part's own settings were given
to it when the method was configured (:meth:`unipts.methods.Method.configure`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from ..lightning import CalibrationDataModule
    from ..spec.sections import Trainer as Hardware


@dataclass
class Job:
    """The run directory, the dense network, the student (its masked copy, dense until the method
    gives it masks), the calibration data, the global sparsity ``target``, and ``hardware``: where
    and in which precision forward passes run (``accelerator``, ``devices``, ``precision``,
    ``progress_bar``)."""

    run_dir: Path
    dense: nn.Module
    student: nn.Module
    data: CalibrationDataModule
    num_classes: int
    target: float
    hardware: Hardware
