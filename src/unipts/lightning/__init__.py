"""Lightning adapters: modules, data module and callbacks around the sparsity engine.

The callbacks work in any LightningModule and Trainer, not only unipts's own; what they ask of
a module is in :mod:`unipts.lightning.contract`.
"""

from .callbacks import (
    DynamicSparsity, EpochLog, FixedAllocation, GradualPruning, KeepBestStudent, SparsityMonitor, ValidateFirstAndLast,
    FitClock, earlier_session_seconds, validation_seconds,
)
from .datamodule import CalibrationDataModule
from .module import Classifier, OptimConfig, SparseFinetune
from .search_callback import SparsitySearch

__all__ = ["DynamicSparsity", "EpochLog", "FixedAllocation", "GradualPruning", "KeepBestStudent", "SparsityMonitor",
           "CalibrationDataModule", "Classifier", "OptimConfig", "SparseFinetune", "SparsitySearch",
           "ValidateFirstAndLast", "FitClock", "earlier_session_seconds", "validation_seconds"]
