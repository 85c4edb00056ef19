"""``unipts-prune``: post-training sparsity of a dense network with a small calibration subset."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from .. import UniptsError
from ..console import verbose_flag
from ._entry import CONFIG_DIR, reports_errors

if TYPE_CHECKING:
    from ..lightning import CalibrationDataModule

# torch, Lightning and the engine are imported where they are used: `--help` loads none of them,
# and a refused configuration is reported before Lightning is loaded.

log = logging.getLogger("unipts")


def _allocation_options(cfg: DictConfig) -> dict:
    """The ``allocation`` node's options for its rule. The node carries the search's options
    whatever the rule (so a sweep across methods can set them); a fixed rule gets only the ones
    its function takes."""
    import inspect

    from ..sparse import RULES

    options = OmegaConf.to_container(cfg.allocation, resolve=True)
    rule = options.pop("rule")
    if rule not in RULES:
        return options
    accepted = inspect.signature(RULES[rule]).parameters
    return {key: value for key, value in options.items() if key in accepted}


def _plain_batches(cfg: DictConfig, data: CalibrationDataModule):
    """The calibration images, without augmentation, in batches."""
    from torch.utils.data import DataLoader

    loader = DataLoader(data.calibration_set(plain=True), batch_size=cfg.data.batch_size, shuffle=False)
    return (x for x, _ in loader)


def _allocate_(cfg: DictConfig, student, dense, data: CalibrationDataModule, run_dir: Path):
    """Give the student its masks by the configured allocation. Returns the search callback (for
    ``allocation=search``, which searches when the fit starts) and extra summary fields."""
    from ..baselines import pot_prune_
    from ..lightning import SparsitySearch
    from ..sparse import allocate, set_masks_

    try:
        if cfg.method.name == "gmp_full":
            log.info("gmp_full: masks start dense; GradualPruning raises the sparsity during training")
            return None, {}
        if cfg.allocation.rule == "search":
            # Until the fit starts the student holds the all-equal regrowing table; searching
            # inside the fit means a resumed fit restores the result instead of searching again.
            set_masks_(student, allocate(student, "regrow", cfg.sparsity.target, delta=cfg.allocation.delta))
            search = SparsitySearch.from_config(_allocation_options(cfg), cfg.sparsity.target, run_dir,
                                                progress=cfg.trainer.enable_progress_bar)
            return search, {}
        if cfg.method.name == "pot":
            report = pot_prune_(student, dense, cfg.sparsity.target, _plain_batches(cfg, data),
                                OmegaConf.to_container(cfg.pot, resolve=True), allocation=cfg.allocation.rule,
                                allocation_options=_allocation_options(cfg))
            return None, {"pot": {"seconds": report["seconds"], "steps": report["steps"]}}
        if cfg.method.name == "unipts" and cfg.allocation.rule == "regrow":
            log.info("allocation: the all-equal reducing-regrowing table (delta=%s), no search", cfg.allocation.delta)
        set_masks_(student, allocate(student, cfg.allocation.rule, cfg.sparsity.target, **_allocation_options(cfg)))
        return None, {}
    except (ValueError, FileNotFoundError) as exc:
        raise UniptsError(str(exc)) from exc


def _check_table(cfg: DictConfig, splits) -> None:
    """``allocation=table``: the file must fit the network and ``sparsity.target``, checked on a
    freshly built network before the dense model is pre-trained, loaded or evaluated."""
    if cfg.allocation.rule != "table":
        return
    from ..builders import build_network
    from ..sparse import allocate, sparsify

    network = sparsify(build_network(cfg, splits), exclude=cfg.model.exclude, pattern=cfg.sparsity.pattern)
    try:
        allocate(network, "table", cfg.sparsity.target, **_allocation_options(cfg))
    except (ValueError, FileNotFoundError) as exc:
        raise UniptsError(str(exc)) from exc


def _calibration_subset(cfg: DictConfig, splits, resume: Path | None) -> list[int]:
    """The calibration indices; when resuming, the ones saved beside the checkpoint, which must
    be the ones this configuration draws."""
    from ..data import calibration_indices

    size = len(splits.train_labels) if cfg.calib.size is None else cfg.calib.size
    indices = calibration_indices(splits.train_labels, size, cfg.calib.seed, cfg.calib.balanced)
    if resume is not None:
        saved_file = resume.parent.parent / "calib_indices.json"
        if saved_file.is_file():
            saved = json.loads(saved_file.read_text())
            if saved != indices:
                raise UniptsError(f"calib.size/calib.seed/calib.balanced: {saved_file} holds a different calibration "
                                  f"subset ({len(saved)} images) than this configuration draws ({len(indices)}); "
                                  "resume with the original run's calib settings")
            log.info("resume: reusing the calibration subset in %s", saved_file)
            indices = saved
    return indices


def _holdout(cfg: DictConfig, finetunes: bool) -> int:
    """Calibration images held out of a distillation fine-tune to pick its best state (0: none)."""
    if not finetunes or cfg.method.name == "gmp_full":
        return 0
    return int(cfg.finetune.get("holdout_images", 0) or 0)


def _check_calib_size(cfg: DictConfig, available: int) -> None:
    if cfg.calib.size is not None and cfg.calib.size > available:
        where = "calib.root" if cfg.calib.get("root") is not None else "the training split"
        raise UniptsError(f"calib.size: {cfg.calib.size} is larger than {where} ({available} images); valid: 1..{available}")


def _objective_name(cfg: DictConfig) -> str:
    return "ce" if cfg.method.name == "gmp_full" else cfg.objective.name


def _mask_kind(cfg: DictConfig) -> str:
    if cfg.method.name == "gmp_full":
        return "gradual"
    return "dynamic" if cfg.dynamic.interval else "static"


def _keep_earlier_metrics(run_dir: Path) -> None:
    """Lightning's CSV logger starts ``metrics.csv`` afresh; a resumed run keeps the interrupted
    run's rows as ``metrics.<n>.csv`` beside it."""
    current = run_dir / "csv" / "metrics.csv"
    if current.is_file():
        n = len(list(current.parent.glob("metrics.*.csv")))
        current.rename(current.with_name(f"metrics.{n}.csv"))


def has_finetune(cfg: DictConfig) -> bool:
    return bool(cfg.method.finetune and cfg.finetune.epochs > 0)


def run(cfg: DictConfig, resume: Path | None = None) -> dict:
    """The whole job; ``resume``: the checkpoint to continue the fine-tune from (checked by
    :func:`~unipts.cli._record.check_start`)."""
    import lightning.pytorch as pl

    from ..atomic import write_json_atomic
    from ..builders import build_extra_callbacks, build_mix, build_objective, build_splits, build_trainer, optim_config
    from ..console import with_progress
    from ..data import hold_out_validation, unlabeled_calibration
    from ..dense import obtain_dense
    from ..lightning import (
        CalibrationDataModule, Classifier, DynamicSparsity, GradualPruning, KeepBestStudent, SparseFinetune,
        SparsityMonitor,
    )
    from ..sparse import fold_masks_, reestimate_bn_, sparsify
    from ..sparse.nm import describe as describe_pattern, log_pattern
    from ._run import evaluate, evaluate_network, log_layer_table, report_run, save_final, write_summary

    started = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    finetunes = has_finetune(cfg)
    splits = build_splits(cfg)
    if cfg.eval_split == "val":
        try:
            splits = hold_out_validation(splits, cfg.validation.size, cfg.validation.seed)
        except ValueError as exc:
            raise UniptsError(str(exc)) from exc
        log.info("evaluating on %d held-out training images (eval_split=val), not on the test split", cfg.validation.size)
    unlabeled = cfg.calib.get("root") is not None
    if not unlabeled:
        _check_calib_size(cfg, len(splits.train_labels))
    _check_table(cfg, splits)
    dense_started = time.perf_counter()
    dense, dense_source = obtain_dense(cfg, splits)  # trained on the labelled split where it pre-trains
    if unlabeled:
        splits = unlabeled_calibration(cfg.calib.root, splits)
        _check_calib_size(cfg, len(splits.train_labels))
    n_train = len(splits.train_labels)
    indices = _calibration_subset(cfg, splits, resume)
    if cfg.method.name == "gmp_full" and len(indices) < n_train:
        log.warning("gmp_full trains on %d of the %d training images (calib.size=%s); calib.size=null uses them all",
                    len(indices), n_train, cfg.calib.size)
    data = CalibrationDataModule(splits, indices, cfg.data.batch_size, cfg.data.eval_batch_size, cfg.data.num_workers,
                                 seed=cfg.seed, mix=build_mix(cfg) if finetunes else None, holdout=_holdout(cfg, finetunes))
    dense_metrics = evaluate_network(cfg, dense, splits.num_classes, data)
    log.info("dense model (%s): top-1 %.4f", dense_source, dense_metrics["top1"])
    dense_s = time.perf_counter() - dense_started

    student = sparsify(copy.deepcopy(dense), exclude=cfg.model.exclude, srste_decay=cfg.dynamic.srste_decay,
                       pattern=cfg.sparsity.pattern)
    log_pattern(student)
    t = time.perf_counter()
    search, extra = _allocate_(cfg, student, dense, data, run_dir)
    pattern = describe_pattern(student)  # N:M: the pattern, its layer sparsity, the layers it leaves dense
    if pattern:
        extra["sparsity_pattern"] = pattern
    allocation_s = time.perf_counter() - t
    callbacks: list[pl.Callback] = [SparsityMonitor()] if search is None else [search, SparsityMonitor()]
    keep_best = None

    if finetunes and cfg.method.name == "gmp_full":
        callbacks.append(GradualPruning(cfg.sparsity.target, cfg.allocation.rule, **cfg.gmp))
        module = Classifier(student, splits.num_classes, optim_config(cfg.finetune))
    elif finetunes:
        callbacks.append(DynamicSparsity(cfg.dynamic.interval))
        if data.holdout:
            keep_best = KeepBestStudent(data.holdout_images())
            callbacks.append(keep_best)
        module = SparseFinetune(student, dense, build_objective(cfg), splits.num_classes, optim_config(cfg.finetune),
                                teacher_bn_train=cfg.objective.teacher_bn_train, decay_per=cfg.objective.decay_per)
    else:
        module = Classifier(student, splits.num_classes)
    callbacks += build_extra_callbacks(cfg)
    trainer = build_trainer(cfg, cfg.finetune.epochs if finetunes else 0, callbacks, cfg.checkpoint.save_top_k)
    if resume is not None and trainer.is_global_zero:
        _keep_earlier_metrics(run_dir)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "calib_indices.json", indices)

    t = time.perf_counter()
    if finetunes:
        if resume is not None:
            log.info("resume: continuing the fine-tune from %s (masks, optimizer, schedule and search result "
                     "come from the checkpoint)", resume)
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume is not None else None)
    elif search is not None:
        search.search(student, data.calibration_set(plain=True), trainer)
    if search is not None:
        allocation_s += search.search_seconds
        extra.update(search.summary())
    if keep_best is not None:
        extra["keep_best"] = keep_best.summary()
    if cfg.method.bn_recalibrate:
        batches = math.ceil(len(data.calibration_set(plain=True)) / cfg.data.batch_size)
        reestimate_bn_(student, with_progress(_plain_batches(cfg, data), "BN re-estimation", batches))
    finetune_s = time.perf_counter() - t - (search.search_seconds if search is not None else 0.0)
    fold_masks_(student)
    metrics = evaluate(cfg, module, data, trainer)

    summary = {}
    if trainer.is_global_zero:
        checkpoint, sparsity = save_final(cfg, student, run_dir, "final.ckpt")
        summary = {
            "task": "prune", "method": cfg.method.name, "model": cfg.model.name, "data": cfg.data.name,
            "allocation": cfg.allocation.rule,
            "objective": _objective_name(cfg) if finetunes else None,
            "masks": _mask_kind(cfg) if finetunes else "one-shot",
            "target_sparsity": cfg.sparsity.target, **{k: v for k, v in sparsity.items() if k != "layers"},
            "calib_size": len(indices), "seed": cfg.seed, "eval_split": cfg.eval_split, "resumed_from": str(resume) if resume else None,
            "skipped_images": len(splits.skipped_images),
            **metrics, "dense_top1": dense_metrics["top1"], "dense_top5": dense_metrics["top5"],
            "wall_s": {"dense": dense_s, "search": allocation_s, "finetune": finetune_s,
                       "total": time.perf_counter() - started},
            "layers": sparsity["layers"], "checkpoint": checkpoint, "dense_ckpt": dense_source,
            **extra, "config": OmegaConf.to_container(cfg, resolve=True),
        }
        log_layer_table(trainer, summary["layers"], summary["achieved_sparsity"])
        write_summary(run_dir, summary)
        report_run(summary, run_dir)
    return summary


@verbose_flag
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="prune")
@reports_errors
def main(cfg: DictConfig) -> None:
    from ..config import validate_prune
    from ..console import apply_runtime
    from ._record import check_start, keeps_record_on_refusal, record_start

    run_dir = Path(cfg.paths.output_dir)
    with keeps_record_on_refusal(run_dir):  # a refused start leaves the run's .hydra/ as it was
        validate_prune(cfg)
        resume = check_start(cfg, run_dir, has_finetune(cfg))
    apply_runtime(cfg.get("runtime"))
    record_start(cfg, run_dir)
    run(cfg, resume)


if __name__ == "__main__":
    main()
