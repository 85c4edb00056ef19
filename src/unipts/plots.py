"""PNG figures of a sparsity search (matplotlib's Agg canvas: no display, no global backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_layer_sparsity(path: str | Path, tables: Mapping[str, Mapping[str, float]], target: float | None = None,
                        title: str = "per-layer sparsity") -> Path:
    """Grouped bars, one group per layer (in the order of the first table), one bar per table
    (e.g. ``{"searched": ..., "uniform": ..., "ERK": ...}``, each layer -> sparsity); the first
    table's bars carry their values."""
    path = Path(path)
    fig = layer_sparsity_figure(tables, target, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def layer_sparsity_figure(tables: Mapping[str, Mapping[str, float]], target: float | None = None,
                          title: str = "per-layer sparsity"):
    import numpy as np

    names = list(next(iter(tables.values())))
    n_tables = len(tables)
    x = np.arange(len(names))
    width = 0.8 / max(1, n_tables)
    fig = _figure(max(6.0, 0.32 * len(names) + 2.0), 4.2)
    ax = fig.add_subplot()
    for i, (label, table) in enumerate(tables.items()):
        # an edge in the bar's colour: a layer kept dense (sparsity 0) still shows, as a line at 0
        bars = ax.bar(x + (i - (n_tables - 1) / 2) * width, [table.get(k, float("nan")) for k in names], width,
                      label=label, edgecolor=f"C{i}", linewidth=0.8)
        if i == 0:
            ax.bar_label(bars, fmt="%.2f", rotation=90, fontsize=6, padding=2)
    if target is not None:
        ax.axhline(target, color="black", linewidth=0.8, linestyle="--", label=f"target {target:g}")
    ax.set_xticks(x, names, rotation=75, fontsize=7, ha="right")
    ax.set_ylabel("sparsity")
    ax.set_ylim(-0.02, 1.3)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", ncol=n_tables + 1, frameon=False)
    fig.tight_layout()
    return fig


def plot_fitness(path: str | Path, history: Sequence[Mapping[str, float]], title: str = "search fitness") -> Path:
    """Best, mean and best-ever fitness per generation."""
    path = Path(path)
    gens = [h["generation"] for h in history]
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    ax.plot(gens, [h["best"] for h in history], marker="o", markersize=3, label="generation best")
    ax.plot(gens, [h["mean"] for h in history], marker="o", markersize=3, label="generation mean")
    if all("best_ever" in h for h in history):
        ax.plot(gens, [h["best_ever"] for h in history], linestyle="--", label="best ever")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (top-1 on the fitness images)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
