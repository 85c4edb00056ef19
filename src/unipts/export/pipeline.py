"""Every export file of one network, staged under temporary names and renamed into place together."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..atomic import staged
from .compressed import decompress, save_compressed
from .fold import count_zeros, tensor_bytes
from .onnx_export import check_initializers, check_outputs, export_onnx

MODEL_PT, COMPRESSED, ONNX = "model.pt", "model.sparse.pt", "model.onnx"


@torch.no_grad()
def positive_zeros_(model: nn.Module, keys: Sequence[str]) -> None:
    """Store every zero of the named weights as +0.0 (``w * 0`` leaves -0.0 where ``w < 0``); the
    values, and so the outputs, are unchanged."""
    params = dict(model.named_parameters())
    for key in keys:
        p = params[key]
        p.copy_(torch.where(p == 0, torch.zeros((), dtype=p.dtype), p))


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (so -0.0 differs from +0.0 and NaN equals itself)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() and a.element_size() in _SAME_SIZE_INT:
        view = _SAME_SIZE_INT[a.element_size()]
        return bool(torch.equal(a.contiguous().view(view), b.contiguous().view(view)))
    return bool(torch.equal(a, b))


def _outputs_equal(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool(torch.equal(a.eval()(x), b.eval()(x)))


def export_network(model: nn.Module, out_dir: str | Path, example: torch.Tensor, sparse_keys: Sequence[str],
                   reference: nn.Module | None = None, onnx: bool = True, exporter: str = "torchscript",
                   opset: int | None = None, tolerance: float = 1e-4) -> dict:
    """Write ``model.pt``, ``model.sparse.pt`` and (``onnx``) ``model.onnx`` for a plain network.

    ``model`` is the unmasked network with folded weights (its zero weights are set to +0.0 in
    place); ``sparse_keys`` the state_dict keys of its prunable weights (stored as bitmask +
    values, and over which the sparsity is measured);
    ``example`` the input batch for the ONNX export and its check; ``reference`` (the masked
    network, if any) must give the same outputs as ``model``. Returns the report's fields.
    """
    out_dir = Path(out_dir)
    model = model.eval()
    positive_zeros_(model, sparse_keys)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    zeros, total = count_zeros(state, sparse_keys)
    report: dict = {}
    started = time.perf_counter()
    names = [MODEL_PT, COMPRESSED] + ([ONNX] if onnx else [])
    with staged(out_dir, names) as tmp:
        torch.save(state, tmp[MODEL_PT])
        reloaded = torch.load(tmp[MODEL_PT], map_location="cpu", weights_only=True)
        fresh_ok = list(reloaded) == list(state) and all(torch.equal(reloaded[k], state[k]) for k in state)
        compressed_bytes = save_compressed(state, tmp[COMPRESSED], sparse_keys)
        restored = decompress(tmp[COMPRESSED])
        exact = list(restored) == list(state) and all(bit_equal(restored[k], state[k]) for k in state)
        dense_bytes = tensor_bytes(state)
        report.update({
            "files": {"model_pt": MODEL_PT, "compressed": COMPRESSED, "onnx": ONNX if onnx else None},
            "dense_size_bytes": dense_bytes,
            "model_pt_size_bytes": tmp[MODEL_PT].stat().st_size,
            "compressed_size_bytes": compressed_bytes,
            "compressed_size_ratio": compressed_bytes / dense_bytes if dense_bytes else None,
            "achieved_sparsity": zeros / total if total else 0.0,
            "prunable_layers": len(sparse_keys),
            "prunable_weights": total,
            "zero_weights": zeros,
            "model_pt_reloads_exactly": fresh_ok,
            "compressed_roundtrip_exact": exact,
        })
        if reference is not None:
            report["folded_matches_masked"] = _outputs_equal(model, reference, example)
        if onnx:
            used = export_onnx(model, example, tmp[ONNX], exporter, opset)
            report.update({"onnx_exporter": exporter, "onnx_opset": used, "onnx_size_bytes": tmp[ONNX].stat().st_size,
                           "onnx_check_batch": list(example.shape), "onnx_tolerance": tolerance})
            report.update(check_outputs(tmp[ONNX], model, example, tolerance))
            report.update(check_initializers(tmp[ONNX], state, sparse_keys))
    report["export_wall_s"] = time.perf_counter() - started
    return report


def example_batch(input_shape: Sequence[int], batch: int = 8, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal batch of ``(batch, *input_shape)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_shape), generator=generator)

