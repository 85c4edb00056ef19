"""UniPTS's reducing-regrowing evolutionary search of per-layer sparsities (plain PyTorch).

:mod:`.genetic` is the genetic algorithm (it only sees a ``score(population)`` function);
:mod:`.fitness` scores candidates on one working copy of the masked network and drives the
whole search (:func:`search_allocation`), under torch.distributed too; :mod:`.report` writes
what a finished search leaves in a run directory.
"""

from .fitness import (
    DEFAULT_NOISE_STD,
    RELEASED_NOISE_STD,
    AllocationSearch,
    Fitness,
    autocast_dtype,
    images_per_evaluation,
    search_allocation,
    sharded_score,
    split_calibration,
    split_sizes,
    stack_images,
)
from .genetic import GAConfig, SearchResult, child_counts, crossover, genetic_search, mutate
from .images import CompactImages, keep_images
from .report import FITNESS_PLOT, LAYER_PLOT, TABLE_FILE, write_plots, write_table

__all__ = [
    "DEFAULT_NOISE_STD", "RELEASED_NOISE_STD", "AllocationSearch", "Fitness", "autocast_dtype",
    "images_per_evaluation", "search_allocation", "sharded_score", "split_calibration", "split_sizes",
    "stack_images", "CompactImages", "keep_images", "GAConfig", "SearchResult", "child_counts", "crossover",
    "genetic_search", "mutate", "FITNESS_PLOT", "LAYER_PLOT", "TABLE_FILE", "write_plots", "write_table",
]
