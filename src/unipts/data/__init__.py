"""Data sets and calibration subsets, in plain PyTorch."""

from .augment import BatchAugment
from .calibration import calibration_indices
from .datasets import UNLABELED, Splits, cifar10, digits, hold_out_validation, imagefolder, unlabeled_calibration

__all__ = ["BatchAugment", "calibration_indices", "Splits", "cifar10", "digits", "hold_out_validation", "imagefolder", "unlabeled_calibration", "UNLABELED"]
