"""Measurements for the run summary (``summary.json``) from saved weights."""

from __future__ import annotations

from pathlib import Path

import torch

from .sparse.stats import LayerSparsity, global_sparsity


def saved_layer_sparsities(checkpoint: str | Path, layer_names: list[str], prefix: str = "") -> list[LayerSparsity]:
    """Zeros of each named layer's weight as stored in a checkpoint file (masks applied, if present)."""
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj)
    out = []
    for name in layer_names:
        w = state[f"{prefix}{name}.weight"]
        mask = state.get(f"{prefix}{name}.mask")
        if mask is not None:
            w = w * mask
        out.append(LayerSparsity(name, w.numel(), int(w.numel() - w.count_nonzero())))
    return out


def sparsity_fields(stats: list[LayerSparsity]) -> dict:
    return {"achieved_sparsity": global_sparsity(stats), "layers": [s.as_dict() for s in stats]}
