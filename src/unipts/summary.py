"""The run summary (``summary.json``) every entry point writes, and its sparsity measurements."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .sparse.masked import WEIGHT_NAMES
from .sparse.stats import LayerSparsity, global_sparsity


def saved_layer_sparsities(checkpoint: str | Path, layer_names: list[str], prefix: str = "") -> list[LayerSparsity]:
    """Zeros of each named layer's weight as stored in a checkpoint file (masks applied, if present)."""
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj)
    out = []
    for name in layer_names:
        w = next(state[key] for key in (f"{prefix}{name}.{weight}" for weight in WEIGHT_NAMES) if key in state)
        mask = state.get(f"{prefix}{name}.mask")
        if mask is not None:
            w = w * mask
        out.append(LayerSparsity(name, w.numel(), int(w.numel() - w.count_nonzero())))
    return out


def peak_memory_mib() -> dict[str, float]:
    """This process's peak memory so far, in MiB: ``cpu`` its peak resident set (loader worker
    processes not included), ``gpu`` the most CUDA memory torch held for tensors, where CUDA
    was used."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"cpu": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["gpu"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def sparsity_fields(stats: list[LayerSparsity]) -> dict:
    return {"achieved_sparsity": global_sparsity(stats), "layers": [s.as_dict() for s in stats]}


@dataclass
class RunSummary:
    """``summary.json`` of a prune, eval or pretrain run: the fields scripts comparing runs rely on
    (the contract in design.md), then the task's own fields (``extra``), then the resolved
    configuration."""

    task: str
    method: str
    model: str
    data: str
    target_sparsity: float | None
    achieved_sparsity: float
    calib_size: int
    top1: float
    top5: float
    dense_top1: float | None
    wall_s: dict[str, float]
    layers: list[dict]
    checkpoint: str  # relative to the run directory, or an absolute path
    peak_memory_mib: dict[str, float] = field(default_factory=peak_memory_mib)  # measured when the summary is made
    extra: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted({f.name for f in fields(self)} & set(self.extra))
        if clash:
            raise ValueError(f"summary: extra fields {clash} would replace the summary's own")

    def as_dict(self) -> dict:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "config")}
        return {**own, **self.extra, "config": self.config}
