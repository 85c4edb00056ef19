"""The methods a prune run can use: each a recipe of parts (:class:`Method`): an allocation
(:mod:`.allocators`), an optional one-shot pruner (:mod:`.pruners`), an optional trainer
(:mod:`.trainers`) and BatchNorm recalibration.

``conf/method/<name>.yaml`` names the parts with ``_target_`` and gives their options; ``method=<name>``
picks one. A method of your own is a part (or a :class:`Method` subclass) and such a file (README:
"Adding a method").
"""

from __future__ import annotations

from pathlib import Path

from .base import Method
from .job import Job
from .pruners import LayerwisePruner, Pot, Pruner, SparseGPT, Wanda
from .trainers import CrossEntropy, Distill, GradualMagnitude, Trainer

__all__ = ["Job", "Method", "Pruner", "LayerwisePruner", "Pot", "SparseGPT", "Wanda", "Trainer", "CrossEntropy", "Distill", "GradualMagnitude", "PRESETS"]

PRESETS = Path(__file__).resolve().parent.parent / "conf" / "method"
