"""Steps every task shares (prune, pretrain, eval): evaluation, the final checkpoint, the summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
from torch import nn

from ..atomic import save_torch_atomic, write_json_atomic
from ..lightning import CalibrationDataModule, Classifier
from ..sparse import layer_sparsities
from ..spec import RunSpec
from ..summary import RunSummary, saved_layer_sparsities, sparsity_fields

log = logging.getLogger("unipts")


def evaluate(spec: RunSpec, module: pl.LightningModule, data: CalibrationDataModule,
             trainer: pl.Trainer | None = None) -> dict[str, float]:
    """Top-1/top-5 on the evaluation split, through ``trainer`` (its loggers see ``test/*``) or,
    without one, through a quiet single-use trainer."""
    if trainer is None:
        trainer = pl.Trainer(accelerator=spec.trainer.accelerator, devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.test(module, datamodule=data, verbose=False)[0]
    return {"top1": float(result["test/top1"]), "top5": float(result["test/top5"])}


def evaluate_network(spec: RunSpec, network: nn.Module, num_classes: int, data: CalibrationDataModule) -> dict[str, float]:
    return evaluate(spec, Classifier(network, num_classes), data)


def save_final(spec: RunSpec, network: nn.Module, run_dir: Path, name: str,
               identity: dict | None = None) -> tuple[str, dict]:
    """Write the network's state_dict (under ``student.``) to ``checkpoints/<name>``, with the
    run's ``identity`` record (:func:`unipts.runs.identity.identity_record`) in it, and measure the
    sparsity of what was written."""
    from ..runs.identity import with_identity
    from ..spec.provenance import checkpoint_metadata

    path = run_dir / "checkpoints" / name
    state = {f"student.{k}": v for k, v in network.state_dict().items()}
    meta = checkpoint_metadata(spec.config)  # the model and data settings: eval and export read them back
    obj = {"state_dict": state, "unipts": json.dumps(meta)}
    save_torch_atomic(with_identity(obj, identity) if identity is not None else obj, path)
    names = [s.name for s in layer_sparsities(network) if _is_measured(network, s.name)]
    return str(path.relative_to(run_dir)), sparsity_fields(saved_layer_sparsities(path, names, "student."))


def _is_measured(network: nn.Module, name: str) -> bool:
    """Masked layers when the network has masks (excluded layers are not prunable), else all."""
    from ..sparse import masked_layers

    masked = {n for n, _ in masked_layers(network)}
    return not masked or name in masked


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    nulled = write_json_atomic(run_dir / "summary.json", summary.as_dict())
    if nulled:
        log.warning("summary: non-finite values written as null: %s", ", ".join(nulled))
    log.info("summary: %s", run_dir / "summary.json")


def log_layer_table(trainer: pl.Trainer, layers: list[dict], achieved: float) -> None:
    """The final per-layer sparsities as a table, and the achieved global sparsity, to every
    W&B logger of ``trainer`` (other loggers already have them as ``sparsity/*`` metrics)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.log_table("sparsity/layers", columns=["layer", "numel", "sparsity"],
                         data=[[x["name"], x["numel"], x["sparsity"]] for x in layers])
            lg.experiment.summary["sparsity/achieved"] = achieved


def outputs_row(run_dir: Path, names: list[str]) -> tuple[str, str]:
    """``outputs``: the run directory and which of ``names`` (relative paths) it holds."""
    present = [name for name in names if (run_dir / name).exists()]
    return "outputs", f"{run_dir}" + (f"  ({', '.join(present)})" if present else "")


def report_run(summary: RunSummary, run_dir: Path) -> None:
    """The end-of-run block of a prune or pretrain run: accuracy before and after, the sparsity,
    the wall time of each phase and where the outputs are."""
    from ..console import report, seconds

    top1, dense = summary.top1, summary.dense_top1
    if summary.task == "pretrain":
        rows = [("top-1", f"{top1:.4f} (top-5 {summary.top5:.4f}) on the test split")]
    else:
        split = summary.extra.get("eval_split") or "test"
        scored = (f"dense {dense:.4f} -> sparse {top1:.4f} ({top1 - dense:+.4f}) on the {split} split"
                  if top1 is not None else "not measured (no evaluation images)")
        rows = [("top-1", scored),
                ("achieved sparsity", f"{summary.achieved_sparsity:.4f} (target {summary.target_sparsity:.4f})")]
    trained = "fine-tune" if summary.task == "prune" else "train"
    phases = [(name, summary.wall_s.get(key)) for name, key in
              (("dense", "dense"), ("search", "search"), (trained, "finetune"), ("validation", "validation"))]
    timing = "  ".join(f"{name} {seconds(value)}" for name, value in phases if value)
    earlier = summary.wall_s.get("earlier_sessions")
    before = f" (+ {seconds(earlier)} in the sessions before the resume)" if earlier else ""
    rows.append(("wall time", f"{timing}  total {seconds(summary.wall_s['total'])}{before}".strip()))
    rows.append(outputs_row(run_dir, ["summary.json", summary.checkpoint, "sparsity_table.yaml", "csv/metrics.csv",
                                      "tensorboard", "wandb"]))
    report(f"unipts-{summary.task} {summary.method} done", rows)
