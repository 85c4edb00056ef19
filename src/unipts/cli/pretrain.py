"""``unipts-pretrain``: train a dense model on a data set's full training split."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from ..console import verbose_flag
from ._entry import CONFIG_DIR, reports_errors

if TYPE_CHECKING:
    from ..spec import PretrainSpec
    from ..summary import RunSummary


def run(spec: PretrainSpec, resume: Path | None = None) -> RunSummary | None:
    """Train, evaluate and write ``checkpoints/dense.pt`` and ``summary.json``; ``resume``: the
    checkpoint to continue from (checked by :func:`~unipts.runs.record.check_start`)."""
    import lightning.pytorch as pl

    from ..pipeline.builders import build_network, build_splits, build_trainer
    from ..atomic import save_torch_atomic
    from ..lightning import earlier_session_seconds
    from ..pipeline.dense import pretrain_module
    from ..runs.identity import identity_record
    from ..sparse import layer_sparsities
    from ..summary import RunSummary, sparsity_fields
    from ..pipeline.steps import evaluate, report_run, write_summary

    started = time.perf_counter()
    run_dir = spec.run_dir
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    splits = build_splits(spec.data)
    model = build_network(spec, splits)
    module, data = pretrain_module(spec, splits, model)
    identity = identity_record(spec.config)  # no dense model to fingerprint
    trainer = build_trainer(spec, spec.data.pretrain.epochs, [], identity, spec.checkpoint.save_top_k, phase="pretrain",
                            resume=resume)
    t = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    train_s = time.perf_counter() - t
    before = earlier_session_seconds(trainer)  # a resumed training's time in the sessions before
    earlier = {"earlier_sessions": before} if before else {}
    metrics = evaluate(spec, module, data, trainer)
    if not trainer.is_global_zero:
        return None
    # A plain state_dict, loadable like torchvision's published files (dense_ckpt=...).
    checkpoint = run_dir / "checkpoints" / "dense.pt"
    save_torch_atomic(model.state_dict(), checkpoint)
    sparsity = sparsity_fields(layer_sparsities(model))
    summary = RunSummary(
        "pretrain", "dense", spec.model.name, spec.data.name, target_sparsity=0.0,
        achieved_sparsity=sparsity["achieved_sparsity"], calib_size=len(splits.train_labels),
        top1=metrics["top1"], top5=metrics["top5"], dense_top1=metrics["top1"],
        wall_s={"search": 0.0, "finetune": train_s, "total": time.perf_counter() - started, **earlier},
        layers=sparsity["layers"], checkpoint=str(checkpoint.relative_to(run_dir)),
        extra={"seed": spec.seed, "dense_top5": metrics["top5"]}, config=spec.config)
    write_summary(run_dir, summary)
    report_run(summary, run_dir)
    return summary


@verbose_flag
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
@reports_errors
def main(cfg: DictConfig) -> None:
    from ..console import apply_runtime
    from ..runs.lock import hold_run_lock
    from ..spec import build_pretrain_spec
    from ..runs.record import check_start, keeps_record_on_refusal, record_start

    run_dir = Path(cfg.paths.output_dir)
    with ExitStack() as held:
        with keeps_record_on_refusal(run_dir):  # as unipts-prune: a resume must repeat the run's settings
            spec = build_pretrain_spec(cfg)
            held.enter_context(hold_run_lock(run_dir))  # one process in a run directory, until it ends
            resume = check_start(spec, trains=True)
        apply_runtime(spec.runtime)
        record_start(spec)
        run(spec, resume)


if __name__ == "__main__":
    main()
