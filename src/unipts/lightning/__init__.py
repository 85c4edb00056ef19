"""Lightning adapters: modules, data module and callbacks around the sparsity engine."""

from .callbacks import (
    DynamicSparsity, EpochLog, GradualPruning, KeepBestStudent, SparsityMonitor, ValidateFirstAndLast, ValidationClock,
    validation_seconds,
)
from .datamodule import CalibrationDataModule
from .module import Classifier, OptimConfig, SparseFinetune
from .search_callback import SparsitySearch

__all__ = ["DynamicSparsity", "EpochLog", "GradualPruning", "KeepBestStudent", "SparsityMonitor", "CalibrationDataModule",
           "Classifier", "OptimConfig", "SparseFinetune", "SparsitySearch", "ValidateFirstAndLast",
           "ValidationClock", "validation_seconds"]
