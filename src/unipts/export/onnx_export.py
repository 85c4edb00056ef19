"""ONNX export of a plain (folded) network, and the checks that the file is what was stored.

Two exporters of ``torch.onnx.export``:

* ``torchscript`` (the default here; ``dynamo=False``): opset 17, ONNX IR 8, so onnxruntime and
  DeepSparse 1.8 (whose bundled runtime reads IR <= 9) both load the file. Constant folding is
  off (``do_constant_folding=False``): with it on, the exporter folds BatchNorm into the preceding
  convolution in eval mode, which rewrites the weights.
* ``dynamo`` (``torch.export`` + onnxscript): opset 18 or later, IR 10. Its graph optimiser is
  off (``optimize=False``) for the same reason: it folds BatchNorm into Conv. Weights are kept in
  the ``.onnx`` file itself (``external_data=False``).

Either way the weights are the file's initializers, zeros included: :func:`check_initializers`
reads them back and compares them with the PyTorch tensors element for element.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class OnnxExportError(RuntimeError):
    """The exporter could not translate the network (an operator it does not support, say)."""


@contextlib.contextmanager
def _quiet():
    """The exporters' deprecation and tracing warnings are not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, exporter: str = "torchscript",
                opset: int | None = None) -> int:
    """Write ``model`` (in eval mode) as ONNX to ``path`` with a dynamic batch dimension.

    ``example`` is an input batch of the right shape (batch size 2 or more). Returns the opset used.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown ONNX exporter {exporter!r}; valid: {list(EXPORTERS)}")
    opset = opset or DEFAULT_OPSET[exporter]
    model = model.eval()
    path = str(path)
    try:
        _export(model, example, path, exporter, opset)
    except Exception as exc:  # noqa: BLE001 - whatever the exporter raises means the same here
        raise OnnxExportError(f"{exporter} exporter, opset {opset}: {type(exc).__name__}: {exc}") from exc
    return opset


@contextlib.contextmanager
def _attention_unfused():
    """nn.MultiheadAttention's inference fast path (one fused kernel, which no ONNX exporter
    translates) off, so the exporters trace its reference operations; the setting is restored."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _export(model: nn.Module, example: torch.Tensor, path: str, exporter: str, opset: int) -> None:
    with _quiet(), torch.no_grad(), _attention_unfused():
        if exporter == "torchscript":
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, do_constant_folding=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        else:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), path, dynamo=True, optimize=False, external_data=False,
                              opset_version=opset, verbose=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},))


def ort_session(path: str | Path, threads: int | None = None, optimize: bool = True):
    """An onnxruntime CPU session (``threads`` intra-op threads; default: torch's thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def check_outputs(path: str | Path, model: nn.Module, inputs: torch.Tensor, tolerance: float = 1e-4) -> dict:
    """Run ``inputs`` through onnxruntime and through ``model``; the largest absolute difference.

    They match when it is at most ``tolerance`` times the largest output magnitude (at least 1):
    float32 rounding grows with the logits' scale, and a deep network with logits near 20
    (MobileNetV3) differs by a few 1e-4 between two correct runtimes."""
    session = ort_session(path)
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(inputs).numpy()
    if got.shape != want.shape:
        return {"onnx_matches_torch": False, "onnx_max_abs_diff": None,
                "onnx_problem": f"output shape {got.shape} vs PyTorch {want.shape}"}
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    return {"onnx_matches_torch": bool(np.isfinite(diff) and diff <= tolerance * scale), "onnx_max_abs_diff": diff,
            "onnx_output_scale": scale}


def initializers(path: str | Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def check_initializers(path: str | Path, state: Mapping[str, torch.Tensor], keys: Iterable[str]) -> dict:
    """Every named weight of ``state`` as an ONNX initializer, compared element for element.

    A weight is looked up by its state_dict name; the TorchScript exporter stores identical
    tensors once, so one not found by name is looked for among initializers of equal content.
    Returns the zero counts on both sides and whether every weight is stored unchanged.
    """
    inits = initializers(path)
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for array in inits.values():
        by_shape.setdefault(tuple(array.shape), []).append(array)
    torch_zeros = onnx_zeros = 0
    missing, changed = [], []
    for key in keys:
        want = state[key].detach().cpu().numpy()
        torch_zeros += int(want.size - np.count_nonzero(want))
        got = inits.get(key)
        if got is None:
            got = next((a for a in by_shape.get(tuple(want.shape), []) if np.array_equal(a, want)), None)
            if got is None:
                missing.append(key)
                continue
        onnx_zeros += int(got.size - np.count_nonzero(got))
        if got.shape != want.shape or not np.array_equal(got, want):
            changed.append(key)
    return {"onnx_weights_identical": not missing and not changed, "onnx_zero_weights": onnx_zeros,
            "torch_zero_weights": torch_zeros, "onnx_missing_weights": missing, "onnx_changed_weights": changed}
