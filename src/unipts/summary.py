"""The run summary (``summary.json``), written atomically, and measurements from saved weights."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .sparse.stats import LayerSparsity, global_sparsity


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place, so a crash never
    leaves a half-written file and an existing file is only replaced by a complete one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
