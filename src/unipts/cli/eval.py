"""``unipts-eval``: evaluate a dense or sparse checkpoint on the evaluation split.

A checkpoint written by a run is scored with that run's model and data settings
(:mod:`unipts.spec.provenance`); ``model=``/``data=`` are needed only for a bare state_dict.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from ..console import verbose_flag
from ._entry import CONFIG_DIR, reports_errors

if TYPE_CHECKING:
    from ..spec import EvalSpec
    from ..summary import RunSummary

log = logging.getLogger("unipts")


def run(spec: EvalSpec) -> RunSummary:
    import lightning.pytorch as pl

    from ..pipeline.builders import build_network, build_splits
    from ..lightning import CalibrationDataModule
    from ..models import describe_non_finite, load_weights, read_state_dict
    from ..sparse import layer_sparsities, masked_layers, sparsify
    from ..sparse.masked import is_prunable
    from ..summary import RunSummary, sparsity_fields
    from ..pipeline.steps import evaluate_network, write_summary

    started = time.perf_counter()
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    splits = build_splits(spec.data)
    model = build_network(spec, splits)
    state = read_state_dict(spec.checkpoint, "checkpoint")
    broken = describe_non_finite(state)
    if broken:  # still evaluated: the accuracy says how much harm they do
        log.warning("checkpoint: %s: %s; its outputs may be NaN", spec.checkpoint, broken)
    if any(k.endswith(".mask") for k in state):
        masked = {k.removesuffix(".mask") for k in state if k.endswith(".mask")}
        own = {name for name, m in model.named_modules() if is_prunable(m)}
        sparsify(model, exclude=sorted(own - masked))
    load_weights(model, state, spec.checkpoint, "checkpoint")
    data = CalibrationDataModule(splits, None, spec.data.batch_size, spec.data.eval_batch_size, spec.data.num_workers)
    metrics = evaluate_network(spec, model, splits.num_classes, data)
    masked_names = {n for n, _ in masked_layers(model)}
    stats = [s for s in layer_sparsities(model) if not masked_names or s.name in masked_names]
    sparsity = sparsity_fields(stats)
    summary = RunSummary(
        "eval", spec.method_name, spec.model.name, spec.data.name, target_sparsity=None,
        achieved_sparsity=sparsity["achieved_sparsity"], calib_size=0, top1=metrics["top1"], top5=metrics["top5"],
        dense_top1=None, wall_s={"search": 0.0, "finetune": 0.0, "total": time.perf_counter() - started},
        layers=sparsity["layers"], checkpoint=str(Path(spec.checkpoint).resolve()), config=spec.config)
    write_summary(spec.run_dir, summary)
    _report(summary, len(stats), spec.run_dir)
    return summary


def _report(summary: RunSummary, layers: int, run_dir: Path) -> None:
    from ..console import report, seconds
    from ..pipeline.steps import outputs_row

    report("unipts-eval done", [
        ("top-1", f"{summary.top1:.4f} (top-5 {summary.top5:.4f}) on the test split"),
        ("sparsity", f"{summary.achieved_sparsity:.4f} over {layers} layers"),
        ("checkpoint", summary.checkpoint),
        ("wall time", seconds(summary.wall_s["total"])),
        outputs_row(run_dir, ["summary.json"]),
    ])


@verbose_flag
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@reports_errors
def main(cfg: DictConfig) -> None:
    from ..console import apply_runtime
    from ..spec import build_eval_spec
    from ..spec.provenance import adopt_checkpoint_run

    cfg = adopt_checkpoint_run(cfg)  # the model and data of the run that wrote the checkpoint
    spec = build_eval_spec(cfg)
    apply_runtime(spec.runtime)
    run(spec)


if __name__ == "__main__":
    main()
