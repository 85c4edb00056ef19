"""The frame SparseGPT and Wanda share: allocation, then each layer pruned in forward order on
its inputs from the network pruned so far, then the masks folded.

A method supplies only how one layer is pruned (:data:`LayerPruner`); this frame guarantees the
rest: every layer ends with exactly its allocated number of pruned weights (checked after each
layer), the allocation's ``target_sparsity`` buffers are set, the math runs in float32 even under
autocast, and the network's mode is restored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..sparse import allocate, fold_masks_, masked_layers, reestimate_bn_, set_masks_
from ..sparse.masked import MaskedLayer
from .layerwise import LayerVisit, as_batches, walk_layers

log = logging.getLogger(__name__)

#: Prunes one layer in place (its ``mask`` buffer, and its weight if the method updates it) to
#: exactly ``n_zeros`` pruned weights, from the layer's inputs on the calibration batches.
#: Returns what is worth recording about the layer (numbers only), e.g. ``{"output_error": 0.01}``.
LayerPruner = Callable[[MaskedLayer, list[torch.Tensor], int], dict]


def prune_layerwise_(
    student: nn.Module,
    target: float,
    batches: Iterable,
    prune_layer: LayerPruner,
    *,
    label: str,
    engine: str = "auto",
    inputs: str = "sparse",
    dense: nn.Module | None = None,
    allocation: str = "uniform",
    allocation_options: Mapping[str, Any] | None = None,
    bn_recalibrate: bool = False,
) -> dict:
    """Allocate ``target`` over ``student``'s masked layers, prune each with ``prune_layer`` and fold.

    Each layer's inputs come from the network pruned so far (``inputs="sparse"``) or, with
    ``inputs="dense"``, from ``dense`` (the network ``student`` was sparsified from).
    Layers the walk never reaches (not called by the forward pass) keep the magnitude mask
    :func:`unipts.sparse.set_masks_` gives them, so their counts are exact too. Returns a summary
    with one record per pruned layer.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity {target} is outside [0, 1)")
    if inputs == "dense" and dense is None:
        raise ValueError(f"{label}.inputs: 'dense' needs the dense network (dense=...); valid without it: 'sparse'")
    device = next(student.parameters()).device
    batches = as_batches(batches, device, label)
    started = time.perf_counter()
    counts = allocate(student, allocation, target, **dict(allocation_options or {}))
    set_masks_(student, counts)  # the target_sparsity buffers, and the N:M counts checked
    n_layers = len(counts)
    records: list[dict] = []

    def visit(step: LayerVisit) -> None:
        t = time.perf_counter()
        n_zeros = counts[step.name]
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            details = prune_layer(step.layer, step.inputs, n_zeros)
        if step.layer.n_zeros != n_zeros:  # the exact global sparsity rests on this
            raise RuntimeError(f"{label}: {step.name} has {step.layer.n_zeros} pruned weights, not its {n_zeros}")
        record = {"name": step.name, "zeros": n_zeros, "sparsity": n_zeros / step.layer.weight.numel(), **details,
                  "seconds": time.perf_counter() - t}
        records.append(record)
        extra = "".join(f", {k} {v:.3e}" for k, v in details.items())
        log.info("%s: layer %d/%d %s (sparsity %.3f%s, %.1fs)", label, len(records), n_layers, step.name,
                 record["sparsity"], extra, record["seconds"])

    engine_used = walk_layers(student, batches, visit, dense=dense if inputs == "dense" else None, inputs=inputs,
                              engine=engine, label=label)
    fold_masks_(student)
    if bn_recalibrate:
        reestimate_bn_(student, batches)
    total = sum(layer.weight.numel() for _, layer in masked_layers(student))
    seconds = time.perf_counter() - started
    log.info("%s: pruned %d of %d weights (%s allocation, %s engine) in %.1fs", label, sum(counts.values()), total,
             allocation, engine_used, seconds)
    return {"target": target, "zeros": sum(counts.values()), "allocation": allocation, "engine": engine_used,
            "layers": records, "seconds": seconds}
