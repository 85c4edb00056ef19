"""What a finished search leaves in its run directory: the per-layer table, loadable again with
``allocation=table allocation.path=...``, and two figures (per-layer sparsity beside the fixed
rules', and the fitness per generation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from ..atomic import write_text_atomic
from ..sparse.allocation import erk, layer_numels, uniform

TABLE_FILE = "sparsity_table.yaml"
LAYER_PLOT = "search_layer_sparsity.png"
FITNESS_PLOT = "search_fitness.png"


def write_table(path: str | Path, target: float, table: Mapping[str, float], *, fitness: float | None,
                evaluations: int, seconds: float | None) -> Path:
    """``{target, fitness, evaluations, search_seconds, layers: {layer: sparsity}}``. Sparsities
    are zero counts over layer sizes at full float precision, so ``round(s * n)`` gives back the
    counts."""
    import yaml

    path = Path(path)
    doc = {
        "target": target,
        "fitness": fitness,
        "evaluations": evaluations,
        "search_seconds": seconds,
        "layers": {k: float(v) for k, v in table.items()},
    }
    write_text_atomic(path, "# per-layer sparsities found by the UniPTS search; use with allocation=table "
                            f"allocation.path={path.name}\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def write_plots(run_dir: str | Path, network: nn.Module, target: float, table: Mapping[str, float],
                fitness: float, history: Sequence[Mapping[str, float]]) -> list[Path]:
    """The searched per-layer sparsities beside the uniform and ERK ones, and the fitness curve,
    as ``LAYER_PLOT`` and ``FITNESS_PLOT`` in ``run_dir``."""
    from ..plots import plot_fitness, plot_layer_sparsity

    run_dir = Path(run_dir)
    numels = layer_numels(network)
    as_table = lambda counts: {k: counts[k] / numels[k] for k in numels}  # noqa: E731
    tables = {"searched": table, "uniform": as_table(uniform(network, target))}
    try:
        tables["ERK"] = as_table(erk(network, target))
    except (ValueError, ZeroDivisionError):  # pragma: no cover - ERK undefined for odd layer shapes
        pass
    return [
        plot_layer_sparsity(run_dir / LAYER_PLOT, tables, target,
                            title=f"per-layer sparsity at {target:g} (searched fitness {fitness:.4f})"),
        plot_fitness(run_dir / FITNESS_PLOT, history),
    ]
