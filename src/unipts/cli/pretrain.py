"""``unipts-pretrain``: train a dense model on a data set's full training split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from ..console import verbose_flag
from ._entry import CONFIG_DIR, reports_errors

if TYPE_CHECKING:
    from ..summary import RunSummary


def run(cfg: DictConfig, resume: Path | None = None) -> RunSummary | None:
    """Train, evaluate and write ``checkpoints/dense.pt`` and ``summary.json``; ``resume``: the
    checkpoint to continue from (checked by :func:`~unipts.cli._record.check_start`)."""
    import lightning.pytorch as pl

    from ..builders import build_network, build_splits, build_trainer
    from ..atomic import save_torch_atomic
    from ..dense import pretrain_module
    from ..sparse import layer_sparsities
    from ..summary import RunSummary, sparsity_fields
    from ._run import evaluate, report_run, write_summary

    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    splits = build_splits(cfg)
    model = build_network(cfg, splits)
    module, data = pretrain_module(cfg, splits, model)
    trainer = build_trainer(cfg, cfg.data.pretrain.epochs, [], cfg.checkpoint.save_top_k, phase="pretrain")
    t = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    train_s = time.perf_counter() - t
    metrics = evaluate(cfg, module, data, trainer)
    if not trainer.is_global_zero:
        return None
    # A plain state_dict, loadable like torchvision's published files (dense_ckpt=...).
    checkpoint = run_dir / "checkpoints" / "dense.pt"
    save_torch_atomic(model.state_dict(), checkpoint)
    sparsity = sparsity_fields(layer_sparsities(model))
    summary = RunSummary(
        "pretrain", "dense", cfg.model.name, cfg.data.name, target_sparsity=0.0,
        achieved_sparsity=sparsity["achieved_sparsity"], calib_size=len(splits.train_labels),
        top1=metrics["top1"], top5=metrics["top5"], dense_top1=metrics["top1"],
        wall_s={"search": 0.0, "finetune": train_s, "total": time.perf_counter() - started},
        layers=sparsity["layers"], checkpoint=str(checkpoint.relative_to(run_dir)),
        extra={"seed": cfg.seed, "dense_top5": metrics["top5"]}, config=OmegaConf.to_container(cfg, resolve=True))
    write_summary(run_dir, summary)
    report_run(summary, run_dir)
    return summary


@verbose_flag
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
@reports_errors
def main(cfg: DictConfig) -> None:
    from ..config import validate_pretrain
    from ..console import apply_runtime
    from ._record import check_start, keeps_record_on_refusal, record_start

    run_dir = Path(cfg.paths.output_dir)
    with keeps_record_on_refusal(run_dir):  # as unipts-prune: a resume must repeat the run's settings
        validate_pretrain(cfg)
        resume = check_start(cfg, run_dir, trains=True)
    apply_runtime(cfg.get("runtime"))
    record_start(cfg, run_dir)
    run(cfg, resume)


if __name__ == "__main__":
    main()
