"""N:M sparsity patterns (``sparsity.pattern=2:4``): masks that keep N of every M weights.

Layout. A weight is seen as a matrix with one row per output unit and the layer's flattened
input as columns: ``weight.view(out, -1)``, i.e. ``in_features`` for a Linear and
``in_channels / groups * kh * kw`` for a Conv2d (PyTorch's (C, kh, kw) order, the order of the
im2col GEMM's reduction dimension). Each row is cut into groups of M consecutive weights and a
mask keeps the N largest magnitudes of every group. That is the layout of sparse tensor cores
and of :func:`torch.sparse.to_sparse_semi_structured` (2:4 along the reduction dimension).

Eligibility. A layer whose row length is not a multiple of M (a stem conv over RGB with 3x3
kernels has 27 inputs per output; a depthwise 3x3 conv has 9) cannot carry the pattern and stays
dense: mask all ones, zero pruned weights. Every eligible layer has sparsity exactly ``1 - N/M``,
so the pattern fixes the whole allocation, and the global sparsity over all masked layers is
slightly below ``1 - N/M`` when some layers are ineligible.

The pattern is a plain attribute ``nm`` of each masked layer (``(n, m)`` or ``None`` for
unstructured), set by :func:`unipts.sparse.sparsify` (``pattern=``) or :func:`set_pattern_`.
It is not in the state_dict: a resumed run rebuilds it from the configuration.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .masked import ATTENTION_LAYERS, masked_layers, unsparsify
from .pattern import (  # noqa: F401  (re-exported: the N:M vocabulary in one place)
    Pattern, TARGET_TOLERANCE, VALID_FORMS, check_target, fixed_zeros, format_pattern, is_eligible, nm_mask,
    parse_pattern, pattern_sparsity, row_length, violations,
)

log = logging.getLogger(__name__)


# -- models -----------------------------------------------------------------------------------
def layer_pattern(layer: nn.Module) -> Pattern | None:
    return getattr(layer, "nm", None)


def set_pattern_(model: nn.Module, pattern) -> Pattern | None:
    """Give every masked layer of ``model`` the pattern (``"2:4"``, ``(2, 4)``, ``"unstructured"``
    or ``None``); masks are not changed (an allocation and :func:`set_masks_` do that)."""
    parsed = parse_pattern(pattern)
    for _, layer in masked_layers(model):
        layer.nm = parsed
    return parsed


def model_pattern(model: nn.Module) -> Pattern | None:
    """The one pattern of ``model``'s masked layers (``None``: unstructured); mixed patterns are an error."""
    found = {layer_pattern(layer) for _, layer in masked_layers(model)}
    if len(found) > 1:
        raise ValueError(f"the masked layers carry different patterns {sorted(map(format_pattern, found))}; "
                         "give them one with set_pattern_()")
    return next(iter(found), None)


def ineligible_layers(model: nn.Module) -> dict[str, int]:
    """Masked layers that cannot carry their pattern, with their inputs per output unit."""
    out = {}
    for name, layer in masked_layers(model):
        pattern = layer_pattern(layer)
        if pattern is not None and not is_eligible(layer.weight, pattern[1]):
            out[name] = row_length(layer.weight)
    return out


def nm_allocation(model: nn.Module, target: float | None = None) -> dict[str, int]:
    """The one allocation an N:M model has: ``numel * (M-N)/M`` zeros in every eligible layer, none
    in the others. ``target`` (if given) must be ``1 - N/M``."""
    pattern = model_pattern(model)
    if pattern is None:
        raise ValueError("the model has no N:M pattern (sparsify(..., pattern='2:4') or set_pattern_())")
    if target is not None:
        check_target(target, pattern)
    return {name: fixed_zeros(layer.weight, pattern) for name, layer in masked_layers(model)}


def describe(model: nn.Module) -> dict:
    """What the pattern does to ``model``, for logs and summary.json: ``{}`` when unstructured."""
    pattern = model_pattern(model)
    if pattern is None:
        return {}
    dense = ineligible_layers(model)
    counts = nm_allocation(model)
    total = sum(layer.weight.numel() for _, layer in masked_layers(model))
    return {
        "pattern": format_pattern(pattern),
        "layer_sparsity": pattern_sparsity(pattern),
        "global_sparsity": sum(counts.values()) / total,
        "dense_layers": {name: f"{length} inputs per output, not a multiple of {pattern[1]}"
                         for name, length in dense.items()},
    }


def log_pattern(model: nn.Module) -> None:
    info = describe(model)
    if not info:
        return
    n_layers = sum(1 for _ in masked_layers(model))
    log.info("sparsity.pattern=%s: %d of %d layers keep %s of every %s weights (sparsity %.4g); global sparsity "
             "%.4f", info["pattern"], n_layers - len(info["dense_layers"]), n_layers, *info["pattern"].split(":"),
             info["layer_sparsity"], info["global_sparsity"])
    for name, why in info["dense_layers"].items():
        log.info("sparsity.pattern=%s: %s stays dense (%s)", info["pattern"], name, why)


# -- export to torch's semi-structured sparse format -------------------------------------------
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


def semi_structured_skip_reason(model: nn.Module) -> str | None:
    """Why :func:`to_semi_structured_` cannot run on ``model`` here, or ``None`` if it can."""
    pattern = model_pattern(model)
    if pattern != (2, 4):
        return (f"torch's semi-structured sparse kernels need the 2:4 pattern; the model is "
                f"{format_pattern(pattern)}")
    if not torch.cuda.is_available():
        return "torch's semi-structured sparse kernels need a CUDA GPU; none is available"
    if torch.cuda.get_device_capability() < (8, 0):
        return (f"torch's semi-structured sparse kernels need a GPU of compute capability 8.0 or later "
                f"(Ampere); this one is {'.'.join(map(str, torch.cuda.get_device_capability()))}")
    return None


def to_semi_structured_(model: nn.Module, dtype: torch.dtype = torch.float16,
                        device: str | torch.device = "cuda") -> dict:
    """Export a 2:4 model for sparse tensor cores, in place.

    The masks are folded and every masked layer turned back into a plain Conv2d/Linear
    (:func:`unsparsify`); the model moves to ``device`` (a GPU) in ``dtype`` (fp16 or bf16, what
    the kernels take); then each Linear's weight becomes a
    :func:`torch.sparse.to_sparse_semi_structured` tensor. Conv2d layers stay dense: torch's
    semi-structured kernels are matrix multiplications only (no convolution). A Linear torch
    refuses (its shape is not a multiple of the kernels' tile, e.g. 10 output classes) stays
    dense too, with torch's reason. Inputs must then be ``dtype`` on the GPU.

    Raises :class:`RuntimeError` with :func:`semi_structured_skip_reason` when the model cannot
    be converted here. Returns ``{"converted": [names], "dense": {name: reason}}``.
    """
    reason = semi_structured_skip_reason(model)
    if reason is not None:
        raise RuntimeError(reason)
    if dtype not in SEMI_STRUCTURED_DTYPES:
        raise ValueError(f"dtype {dtype} is not one of {SEMI_STRUCTURED_DTYPES}")
    from torch.sparse import to_sparse_semi_structured

    layers = {name: layer for name, layer in masked_layers(model)}
    status = {}
    for name, layer in layers.items():
        if isinstance(layer, ATTENTION_LAYERS):
            status[name] = "an attention's projection: torch's attention reads it as a dense tensor"
        elif not isinstance(layer, nn.Linear):
            status[name] = "a convolution: torch's semi-structured kernels are for matrix multiplications only"
        elif not is_eligible(layer.weight, 4):
            status[name] = f"{row_length(layer.weight)} inputs, not a multiple of 4 (kept dense by the pattern)"
        elif violations(layer.weight * layer.mask, 2, 4):
            status[name] = "its masked weight breaks the 2:4 pattern"
    unsparsify(model)
    model.to(device=device, dtype=dtype)
    converted = []
    for name, layer in layers.items():
        if name in status:
            continue
        try:
            sparse = to_sparse_semi_structured(layer.weight.detach().contiguous())
        except RuntimeError as exc:
            status[name] = str(exc).strip().splitlines()[0]
            continue
        layer.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    for name, why in status.items():
        log.info("semi-structured export: %s stays dense (%s)", name, why)
    return {"converted": converted, "dense": status}
