"""``unipts-export``: a pruned checkpoint as deployable files, in a fresh run directory.

``unipts-export checkpoint=outputs/prune/.../checkpoints/final.ckpt`` writes ``model.pt`` (masks
folded into the weights: a plain state_dict of the unmasked architecture), ``model.sparse.pt``
(bitmask + non-zero values, :mod:`unipts.export.compressed`), ``model.onnx`` (checked against
PyTorch with onnxruntime) and ``export.json``. The work is done by :mod:`unipts.export`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from ..common import UniptsError
from ..console import verbose_flag
from ..spec.provenance import Origin, check_choice, run_metadata
from ._entry import CONFIG_DIR, reports_errors

if TYPE_CHECKING:
    import torch

log = logging.getLogger("unipts")

def get_key(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


# The data sets whose images have one size, which their settings do not record (image folders
# record theirs, data.image_size).
FIXED_INPUT_SIZE = {"digits": 8, "cifar10": 32}
AUTO = "auto"


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The checkpoint's state_dict (prefixes ``student.``/``model.``/``module.`` removed) and its
    unipts metadata (``{"model": {...}, "data": name}``), or None where it has none."""
    from ..models import describe_non_finite, load_checkpoint_object, unwrap_state_dict

    obj = load_checkpoint_object(path, "checkpoint")
    meta = None
    if isinstance(obj, dict) and "unipts" in obj:
        try:
            meta = json.loads(obj["unipts"])
        except (TypeError, ValueError) as exc:
            raise UniptsError(f"checkpoint: {path} has unreadable unipts metadata ({exc})") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise UniptsError(f"checkpoint: {path} has unipts metadata without a model config")
    state = unwrap_state_dict(obj, path, "checkpoint")
    if not state:
        raise UniptsError(f"checkpoint: {path} holds an empty state_dict")
    broken = describe_non_finite(state)
    if broken:  # a deployed network would compute NaN; nothing of it is worth writing
        raise UniptsError(f"checkpoint: {path}: {broken}; export a checkpoint of a run that trained without a "
                          "non-finite loss (an earlier epoch's checkpoints/epochNNN.ckpt)")
    return state, meta


def _model_config(cfg: DictConfig, meta: dict | None, path: Path) -> dict:
    chosen = OmegaConf.to_container(cfg.model, resolve=True)
    if chosen.get("name") != AUTO or chosen.get("_target_"):
        if meta is not None:  # it wins, but must be the run's architecture
            check_choice("model", chosen, Origin.from_metadata(meta, path), path)
        return chosen
    if meta is None:
        raise UniptsError(f"checkpoint: {path} records no run (no unipts metadata and no run directory around it); "
                          "name its architecture with model=<name>, e.g. model=resnet20 data=cifar10")
    return dict(meta["model"])


def _data_name(cfg: DictConfig, meta: dict | None, path: Path | None = None) -> str | None:
    name = get_key(cfg, "data.name")
    if name != AUTO:
        if meta is not None:  # it wins (it sets the example input), checked against the run's
            check_choice("data", OmegaConf.to_container(cfg.data, resolve=True), Origin.from_metadata(meta, path), path)
        return name
    return (meta or {}).get("data")


def _input_shape(cfg: DictConfig, in_channels: int, data: str | None, meta: dict | None = None,
                 model_cfg: dict | None = None) -> tuple[int, int, int]:
    """The example input's (channels, height, width): ``input_size=``, else the image size of the
    data settings (the command line's ``data=``, else the run's recorded ones), else the one the
    architecture was built for (``image_size``/``img_size``, a ViT's), else the fixed size of a
    built-in data set; an unknown size is refused."""
    chosen = OmegaConf.to_container(cfg.data, resolve=True) if get_key(cfg, "data.name") not in (AUTO, None) else None
    settings = chosen if chosen is not None else ((meta or {}).get("data_config") or {})
    model_cfg = model_cfg or {}
    size = (get_key(cfg, "input_size") or settings.get("image_size") or model_cfg.get("image_size")
            or model_cfg.get("img_size") or FIXED_INPUT_SIZE.get(data or ""))
    if size is None:
        where = f"data={data}" if data else "a checkpoint that names no data set"
        raise UniptsError(f"input_size: unknown for {where} (its settings record no image_size); give "
                          "input_size=<height = width in pixels>")
    return in_channels, int(size), int(size)


def build_networks(cfg: DictConfig, state: dict, meta: dict | None, path: Path):
    """The unmasked network with the folded weights, the masked network as saved (None if the
    checkpoint has no masks), and the keys of the prunable weights."""
    from ..export import fold_state_dict, infer_io, masked_layer_names, prunable_weight_keys
    from ..models import build_model, load_weights

    model_cfg = _model_config(cfg, meta, path)
    found_in, found_classes = infer_io(state)
    in_channels = get_key(cfg, "in_channels") or found_in
    num_classes = get_key(cfg, "num_classes") or found_classes
    if in_channels is None or num_classes is None:
        raise UniptsError(f"checkpoint: cannot tell the input channels / classes of {path}; "
                          "set in_channels=... and num_classes=...")
    plain = build_model(model_cfg, num_classes, in_channels)
    load_weights(plain, fold_state_dict(state), path, "checkpoint")
    masked = masked_layer_names(state)
    reference = None
    if masked:
        from ..sparse import sparsify
        from ..sparse.masked import is_prunable

        reference = build_model(model_cfg, num_classes, in_channels)
        prunable = {name for name, m in reference.named_modules() if is_prunable(m)}
        sparsify(reference, exclude=sorted(prunable - set(masked)))
        load_weights(reference, state, path, "checkpoint")
    keys = prunable_weight_keys(plain, only=masked or None)
    return plain, reference, keys, model_cfg, in_channels


def run(cfg: DictConfig) -> dict:
    import torch

    from ..spec import check_export, resolved
    from ..export import OnnxExportError, example_batch, export_network, masked_layer_names
    from ..atomic import write_json_atomic

    started = time.perf_counter()
    path = check_export(resolved(cfg))
    torch.manual_seed(cfg.seed)
    state, meta = read_checkpoint(path)
    meta = run_metadata(path, meta)  # the checkpoint's own, else its run directory's
    plain, reference, keys, model_cfg, in_channels = build_networks(cfg, state, meta, path)
    data = _data_name(cfg, meta, path)
    shape = _input_shape(cfg, in_channels, data, meta, model_cfg)
    out_dir = Path(cfg.paths.output_dir)
    example = example_batch(shape, cfg.onnx.check_batch, cfg.seed)
    try:
        report = export_network(plain, out_dir, example, keys, reference=reference, onnx=cfg.onnx.enabled,
                                exporter=cfg.onnx.exporter, opset=cfg.onnx.opset, tolerance=cfg.onnx.tolerance)
    except OnnxExportError as exc:
        raise UniptsError(f"onnx.exporter: the network could not be exported to ONNX ({exc}); try "
                          f"onnx.exporter={'dynamo' if cfg.onnx.exporter == 'torchscript' else 'torchscript'}, "
                          "or onnx.enabled=false to skip it") from exc
    fields = {
        "task": "export", "checkpoint": str(path.resolve()), "model": model_cfg.get("name"), "model_config": model_cfg,
        "data": data, "input_shape": list(shape), "masked_layers": len(masked_layer_names(state)),
        **report, "wall_s": time.perf_counter() - started,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json_atomic(out_dir / "export.json", fields)
    log.info("export: sparsity %.4f over %d layers; model.pt %d bytes, model.sparse.pt %d bytes (%.3fx of %d dense bytes)",
             report["achieved_sparsity"], report["prunable_layers"], report["model_pt_size_bytes"],
             report["compressed_size_bytes"], report["compressed_size_ratio"], report["dense_size_bytes"])
    if cfg.onnx.enabled:
        log.info("export: model.onnx (%s, opset %d) vs PyTorch: max |diff| %.3g (tolerance %g x %.3g), weights %s",
                 report["onnx_exporter"], report["onnx_opset"], report["onnx_max_abs_diff"] or float("nan"),
                 cfg.onnx.tolerance, report.get("onnx_output_scale") or 1.0,
                 "identical" if report["onnx_weights_identical"] else "CHANGED")
        if not report["onnx_matches_torch"] or not report["onnx_weights_identical"]:
            log.warning("export: model.onnx does not reproduce the PyTorch network; see export.json")
    if report.get("folded_matches_masked") is False:
        log.warning("export: the folded network's outputs differ from the masked network's")
    log.info("export: %s", out_dir / "export.json")
    _report(fields, out_dir)
    return fields


def _report(fields: dict, out_dir: Path) -> None:
    from ..console import report, seconds
    from ..pipeline.steps import outputs_row

    if fields.get("onnx_matches_torch") is None:
        checked = "not exported"
    elif fields["onnx_matches_torch"] and fields["onnx_weights_identical"]:
        checked = "matches PyTorch"
    else:
        checked = "DIFFERS: see export.json"
    report("unipts-export done", [
        ("sparsity", f"{fields['achieved_sparsity']:.4f} over {fields['prunable_layers']} layers"),
        ("size", f"model.sparse.pt {fields['compressed_size_bytes']} bytes, {fields['compressed_size_ratio']:.3f}x of "
                 f"{fields['dense_size_bytes']} dense bytes"),
        ("model.onnx", checked),
        ("wall time", seconds(fields["wall_s"])),
        outputs_row(out_dir, ["model.pt", "model.sparse.pt", "model.onnx", "export.json"]),
    ])


@verbose_flag
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@reports_errors
def main(cfg: DictConfig) -> None:
    from ..console import apply_runtime
    from ..spec.fields import read_section
    from ..spec.sections import Runtime

    apply_runtime(read_section(Runtime, cfg.get("runtime") or {}, "runtime"))
    run(cfg)


if __name__ == "__main__":
    main()
