"""The benchmark grid on CIFAR-10 ResNet-20: every method on the same dense model and test split,
each UniPTS row, baseline and ablation at several seeds; results into a CSV, a plot and
BENCHMARKS.md.

    make bench                                                  # every default setting, then the report
    python benchmarks/cifar10_grid.py --data ../shared/data/cifar10-jpeg.tar.gz --settings unipts pot
    python benchmarks/cifar10_grid.py --data ... --settings gmp_full   # the long full-data yardstick
    python benchmarks/cifar10_grid.py --report-only               # the report from the kept results
    python benchmarks/cifar10_grid.py --list                      # the runs, and which are still to do
    python benchmarks/cifar10_grid.py --data ... --jobs 8 --override trainer.accelerator=gpu  # 8 at once on a GPU

Every run is one ``unipts-prune`` (``experiment=cifar10_resnet20``: the committed dense model
``assets/cifar10_resnet20.pt``, ``calib.size=1024``) in its own run directory under ``--out``.
``seed`` and the calibration subset (``calib.seed``) vary together. A finished run's
``summary.json`` and Hydra overrides are kept under ``benchmarks/results/cifar10_resnet20/``
(committed), and a run whose summary is kept there is not run again: the grid takes many hours
on a 2-core machine and continues where it stopped. The ``tune_*`` settings score on held-out
training images (``eval_split=val``) and are how the recipe's defaults were chosen; the others
score on the test split."""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from unipts.collect import row as summary_row  # noqa: E402
from sections import rewrite_section  # noqa: E402  (benchmarks/sections.py, beside this file)

EXPERIMENT = "experiment=cifar10_resnet20"
SEEDS = (0, 1, 2)
# Under the default recipe nothing reads a label, so the labelled and label-free rows differ only in
# the order of the same images: at three seeds they came out 0.58 points apart, and two more seeds
# each (chosen before any of them ran) say how much of that is the order's noise.
LABEL_FREE_SEEDS = (3, 4)
TARGETS = (0.5, 0.7, 0.9)
TUNE = ("eval_split=val",)
RESULTS = REPO / "benchmarks" / "results"
KEPT = RESULTS / "cifar10_resnet20"
KEPT_TABLE = KEPT / "tune-search-dkl30" / "s0.9" / "seed0" / "sparsity_table.yaml"
# The experiment's search (its defaults, written out for the tuning row that chose it): scored
# label-free (KL divergence from the dense network) on 128 + 128 images, at most 15 generations,
# stopping after 5 without a better candidate.
KL_SEARCH = ("allocation.fitness=kl", "allocation.max_images=256", "allocation.bn_images=128",
             "allocation.fitness_images=128", "allocation.generations=15", "allocation.patience=5")
# The search the experiment used before: top-1 against labels on 256 + 256 images, 25 generations.
TOP1_SEARCH = ("allocation.fitness=top1", "allocation.max_images=512", "allocation.bn_images=null",
               "allocation.fitness_images=null", "allocation.generations=25", "allocation.patience=null")
# The released code's search sizes (on top of TOP1_SEARCH): every calibration image re-estimates BN
# and is scored again.
RELEASED_SEARCH_SIZES = ("allocation.max_images=null", "allocation.fitness_on_bn_images=true")
# The experiment's recipe before bfloat16 and the ramp became its defaults: the rows measured with it
# (the previous default's, its ablations, the tuning runs) state it, so they stay what they measured.
PREVIOUS_RECIPE = ("trainer.precision=32-true", "finetune.epochs=100", "dynamic.ramp=0.0", "finetune.mix_until=1.0")
# The recipe after it (issue 14's second round), before ERK and the clean last epochs: the search
# (method=unipts), 140 bfloat16 epochs with the ramp, cutmix to the last epoch.
SEARCHED_RECIPE = ("method=unipts", "finetune.epochs=140", "finetune.mix_until=1.0")
# The baselines were measured in float32 (BatchNorm re-estimation and POT's reconstruction run in
# trainer.precision); they state it against the experiment's bfloat16.
FP32 = ("trainer.precision=32-true",)
# The recipe's tuning runs at 0.9 (validation split): name -> overrides of method=unipts. Each states
# what it ran with where the experiment's defaults have changed since (the grid reports a kept run
# its setting no longer reproduces as stale).
NO_FEATURES = ("objective.features=[]", "objective.feature_weight=0")
FEATURES = ("objective.features=[layer1,layer2,layer3]", "objective.feature_weight=1.0")
TUNING = {
    "search-dkl30": (*TOP1_SEARCH, "finetune.epochs=30", "finetune.mix=none", *NO_FEATURES),
    "erk-dkl30": ("allocation=erk", "finetune.epochs=30", "finetune.mix=none", *NO_FEATURES),
    "erk-kd30": ("allocation=erk", "objective=kd", "finetune.epochs=30", "finetune.mix=none", *NO_FEATURES),
    "erk-kd100": ("allocation=erk", "objective=kd", "finetune.epochs=100", "finetune.mix=none", *NO_FEATURES),
    "erk-dkl100": ("allocation=erk", "finetune.epochs=100", "finetune.mix=none", *NO_FEATURES),
    "erk-dkl100-cutmix": ("allocation=erk", "finetune.epochs=100", "finetune.mix=cutmix", *NO_FEATURES),
    "erk-dkl100-mixup": ("allocation=erk", "finetune.epochs=100", "finetune.mix=mixup", *NO_FEATURES),
    "erk-dkl60-cutmix": ("allocation=erk", "finetune.epochs=60", "finetune.mix=cutmix", *NO_FEATURES),
    # the first run's searched table (top-1 fitness, 512 images, 25 generations) under the new fine-tune
    "searched-table-dkl100-cutmix": ("allocation=table", f"allocation.path={KEPT_TABLE}", "finetune.epochs=100",
                                     "finetune.mix=cutmix", *NO_FEATURES),
    # a search at a third of the forward images: label-free KL fitness on 128 + 128 images, early stop
    "kl-search-dkl100-cutmix": (*KL_SEARCH, "finetune.epochs=100", "finetune.mix=cutmix", *NO_FEATURES),
    # the sparsity reached gradually during the fine-tune (from the dense weights) instead of at its start
    "erk-dkl100-cutmix-ramp0.5": ("allocation=erk", "finetune.epochs=100", "finetune.mix=cutmix", "dynamic.ramp=0.5",
                                  *NO_FEATURES),
    "erk-dkl100-cutmix-ramp0.25": ("allocation=erk", "finetune.epochs=100", "finetune.mix=cutmix",
                                   "dynamic.ramp=0.25", *NO_FEATURES),
    # the stage outputs distilled beside the logits
    "erk-dkl100-cutmix-features": ("allocation=erk", "finetune.epochs=100", "finetune.mix=cutmix", *FEATURES),
    # twice the fine-tune: does the distillation keep gaining past the released 100 epochs?
    "erk-dkl200-cutmix-features": ("allocation=erk", "finetune.epochs=200", "finetune.mix=cutmix", *FEATURES),
    # ... and with the sparsity reached gradually over its first half
    "erk-dkl200-cutmix-features-ramp0.5": ("allocation=erk", "finetune.epochs=200", "finetune.mix=cutmix",
                                           *FEATURES, "dynamic.ramp=0.5"),
    # the fine-tune's learning rate (the released 0.01) from 0.3x to 10x
    **{f"erk-dkl100-cutmix-features-lr{lr}": ("allocation=erk", "finetune.epochs=100", "finetune.mix=cutmix",
                                              *FEATURES, f"finetune.lr={lr}")
       for lr in (0.003, 0.005, 0.03, 0.1)},
    # the teacher's BatchNorm on its running statistics (the released code uses batch statistics)
    "erk-dkl100-cutmix-features-teacher-eval": ("allocation=erk", "finetune.epochs=100", "finetune.mix=cutmix",
                                                *FEATURES, "objective.teacher_bn_train=false"),
    # batches of 32: twice the steps of the default 64 for the same images (what 200 epochs gives, at 100's cost?)
    "erk-dkl100-cutmix-features-batch32": ("allocation=erk", "finetune.epochs=100", "finetune.mix=cutmix",
                                           *FEATURES, "data.batch_size=32"),
}
# The recipe of today (label-free search, cutmix, stage outputs) under bfloat16 autocast, which makes
# a fine-tune epoch about 1.3x faster on a CPU with AVX-512 BF16 (benchmarks/bench_epoch.py): is it as
# accurate, and what do longer fine-tunes and the other knobs buy? Two seeds each: one seed's differences on
# the validation split are within its noise.
BF16 = ("trainer.precision=bf16-mixed",)
BLOCK_FEATURES = "objective.features=[layer1.0,layer1.1,layer1.2,layer2.0,layer2.1,layer2.2,layer3.0,layer3.1,layer3.2]"
TUNING_2_SEEDS = {
    "fp32": (),
    "bf16": BF16,
    "bf16-200-epochs": (*BF16, "finetune.epochs=200"),
    "bf16-150-epochs": (*BF16, "finetune.epochs=150"),
    "bf16-wd5e-4": (*BF16, "finetune.weight_decay=5e-4"),
    "bf16-feature-weight3": (*BF16, "objective.feature_weight=3.0"),
    "bf16-feature-weight0.3": (*BF16, "objective.feature_weight=0.3"),
    "bf16-kd": (*BF16, "objective=kd"),
    "bf16-interval10": (*BF16, "dynamic.interval=10"),
    "bf16-srste0": (*BF16, "dynamic.srste_decay=0"),
    "bf16-200-epochs-lr0.02": (*BF16, "finetune.epochs=200", "finetune.lr=0.02"),
    "bf16-300-epochs": (*BF16, "finetune.epochs=300"),
    # What might add to bfloat16 at 150 epochs, within the same time: the sparsity reached gradually,
    # the output of every residual block distilled instead of every stage's, ERK instead of the search
    # (its 30-40 s would buy about 15 epochs), heavier weight decay.
    "bf16-150-epochs-ramp0.5": (*BF16, "finetune.epochs=150", "dynamic.ramp=0.5"),
    "bf16-150-epochs-block-features": (*BF16, "finetune.epochs=150", BLOCK_FEATURES),
    "bf16-150-epochs-erk": (*BF16, "finetune.epochs=150", "allocation=erk"),
    "bf16-150-epochs-ramp0.5-block-features": (*BF16, "finetune.epochs=150", "dynamic.ramp=0.5", BLOCK_FEATURES),
    "bf16-150-epochs-wd5e-4": (*BF16, "finetune.epochs=150", "finetune.weight_decay=5e-4"),
    # Under the ramp the student starts as the dense network; the base-decayed KL trains a student at
    # temperature 1 towards the teacher's outputs at 4, and one epoch of it took a ramped student from
    # 0.97 to 0.32 validation top-1 (plain KD: 0.87). Does plain KD keep what the ramp starts with?
    "bf16-150-epochs-ramp0.5-kd": (*BF16, "finetune.epochs=150", "dynamic.ramp=0.5", "objective=kd"),
}


# What might add to the default recipe of issue 14's second round (SEARCHED_RECIPE), two seeds
# each: random-resized crops before cutmix (the teacher labels any crop, so 1,024 images show the
# student many more inputs); ERK with the epochs the search's half minute buys on 2 CPU cores; and
# on that, cutmix on half the images, or stopped for the last fifth (or two fifths) of the epochs,
# so that the student also learns the teacher on images as they are.
ERK_155 = ("allocation=erk", "finetune.epochs=155")
TUNING_3 = {
    "default": (),
    **{f"crops{area}": (f"finetune.crop_min_area={area}",) for area in (0.1, 0.25, 0.5)},
    "erk-155-epochs": ERK_155,
    "erk-155-epochs-mix-prob0.5": (*ERK_155, "finetune.mix_prob=0.5"),
    **{f"erk-155-epochs-mix-until{until}": (*ERK_155, f"finetune.mix_until={until}") for until in (0.6, 0.8)},
}


@dataclass(frozen=True)
class Setting:
    """One row of the comparison: the overrides every run of it shares, at which sparsities and seeds."""

    name: str
    overrides: tuple[str, ...]
    targets: tuple[float, ...] = (0.9,)
    seeds: tuple[int, ...] = SEEDS
    pattern: str | None = None  # N:M rows: the target follows from the pattern
    unlabeled: bool = False  # calibrate on the same images written to a flat folder without labels (calib.root)
    against: str | None = None  # the setting the report compares this one with (an ablation's recipe)
    more_seeds: tuple[int, ...] = ()  # further seeds at 0.9 only, where two rows are compared at a fine margin

    def runs(self) -> list[tuple[str, list[str]]]:
        """``(run id, overrides)`` of each run of this setting; of two overrides of one key the later
        wins (a row states the recipe it was measured with, then what it changes)."""
        out = []
        for target in self.targets:
            for seed in (*self.seeds, *self.more_seeds) if target == 0.9 else self.seeds:
                extra = [f"sparsity.target={target}", f"seed={seed}", f"calib.seed={seed}"]
                if self.pattern:
                    extra.append(f"sparsity.pattern={self.pattern}")
                if self.unlabeled:
                    extra.append(f"calib.root=UNLABELED/seed{seed}")
                merged = {o.split("=", 1)[0]: o for o in [*self.overrides, *extra]}
                out.append((f"{self.name}/s{target}/seed{seed}", list(merged.values())))
        return out


def _settings() -> dict[str, Setting]:
    previous = ("method=unipts", *PREVIOUS_RECIPE)
    rows = [
        Setting("unipts", ("method=unipts_erk",), TARGETS, more_seeds=LABEL_FREE_SEEDS),
        Setting("pot", ("method=pot", *FP32), TARGETS),
        *(Setting(f"magnitude-{a}", ("method=magnitude", f"allocation={a}", *FP32), TARGETS)
          for a in ("uniform", "global", "erk", "lamp")),
        # Ablations at 0.9: the default recipe with one ingredient changed.
        # cutmix to the last epoch
        Setting("ablation-mix-to-the-end", ("method=unipts_erk", "finetune.mix_until=1.0"), against="unipts"),
        # the search instead of ERK, with the 140 epochs it leaves in the same time
        Setting("ablation-search", ("method=unipts", "finetune.epochs=140"), against="unipts"),
        # The default recipe before ERK and the clean last epochs, and the ablations measured against it.
        Setting("ablation-searched-recipe", SEARCHED_RECIPE, TARGETS, against="unipts"),
        Setting("ablation-no-ramp", (*SEARCHED_RECIPE, "dynamic.ramp=0.0"), against="ablation-searched-recipe"),
        # float32 with the epochs it affords in about the bfloat16 run's time
        Setting("ablation-fp32-100-epochs", (*SEARCHED_RECIPE, *FP32, "finetune.epochs=100"),
                against="ablation-searched-recipe"),
        # The recipe before that (float32, 100 epochs, no ramp), and the ablations measured against it.
        Setting("ablation-previous-recipe", previous, TARGETS, against="ablation-searched-recipe"),
        # the recipe before the stage outputs were distilled (logits only)
        Setting("ablation-no-features", (*previous, *NO_FEATURES), against="ablation-previous-recipe"),
        Setting("ablation-erk", (*previous, "allocation=erk"), against="ablation-previous-recipe"),
        Setting("ablation-uniform", (*previous, "allocation=uniform"), against="ablation-previous-recipe"),
        # the search scored by top-1 against labels, the experiment's default until the three-seed rows
        # showed the label-free one at least as good for under a third of the forward images
        Setting("ablation-top1-search", (*previous, *TOP1_SEARCH), TARGETS, against="ablation-previous-recipe"),
        # the released search: top-1 with BN and fitness passes over all 1,024 images ...
        Setting("ablation-search-released-sizes", (*previous, *TOP1_SEARCH, *RELEASED_SEARCH_SIZES),
                against="ablation-previous-recipe"),
        # ... and with the released GA's and decode's quirks
        Setting("ablation-released", (*previous, *TOP1_SEARCH, *RELEASED_SEARCH_SIZES,
                                      "allocation.released_quirks=true"), against="ablation-previous-recipe"),
        Setting("ablation-kd", (*previous, "objective=kd"), against="ablation-previous-recipe"),
        Setting("ablation-no-mix", (*previous, "finetune.mix=none"), against="ablation-previous-recipe"),
        Setting("ablation-30-epochs", (*previous, "finetune.epochs=30"), against="ablation-previous-recipe"),
        Setting("ablation-200-epochs", (*previous, "finetune.epochs=200"), against="ablation-previous-recipe"),
        Setting("ablation-static", (*previous, "dynamic.interval=0"), against="ablation-previous-recipe"),
        Setting("ablation-keep-best", (*previous, "finetune.holdout_images=128"), against="ablation-previous-recipe"),
        # bfloat16 autocast with the epochs it affords in about the float32 run's time (an epoch is 1.3x
        # faster at 2 threads, 1.5x at one; the search 1.7x: benchmarks/bench_epoch.py)
        Setting("ablation-bf16-150-epochs", (*previous, *BF16, "finetune.epochs=150"),
                against="ablation-previous-recipe"),
        # Rows made with the top-1 search, kept as they were measured: against ablation-top1-search.
        Setting("ablation-top1-search-no-features", (*previous, *TOP1_SEARCH, *NO_FEATURES), TARGETS,
                against="ablation-top1-search"),
        Setting("ablation-top1-search-200-epochs", (*previous, *TOP1_SEARCH, "finetune.epochs=200"),
                against="ablation-top1-search"),
        # The default recipe on the same images without labels (calib.root): nothing in it reads a label.
        Setting("unlabeled", ("method=unipts_erk",), unlabeled=True, more_seeds=LABEL_FREE_SEEDS),  # its own report line
        Setting("unlabeled-searched-recipe", SEARCHED_RECIPE, unlabeled=True, against="ablation-searched-recipe"),
        Setting("unlabeled-previous-recipe", previous, unlabeled=True, against="ablation-previous-recipe"),
        # N:M fixes each layer's sparsity, so nothing ramps
        Setting("nm-unipts-2:4", ("method=unipts", "dynamic.ramp=0.0"), (0.5,), (0,), "2:4"),
        Setting("nm-magnitude-2:4", ("method=magnitude", *FP32), (0.5,), (0,), "2:4"),
        Setting("nm-unipts-1:4", ("method=unipts", "dynamic.ramp=0.0"), (0.75,), (0,), "1:4"),
        Setting("nm-magnitude-1:4", ("method=magnitude", *FP32), (0.75,), (0,), "1:4"),
        # Choosing the recipe on the validation split (eval_split=val), on the recipe of their time.
        *(Setting(f"tune-{name}", (*previous, *overrides, *TUNE), seeds=(0,)) for name, overrides in TUNING.items()),
        *(Setting(f"tune2-{name}", (*previous, *overrides, *TUNE), seeds=(0, 1))
          for name, overrides in TUNING_2_SEEDS.items()),
        *(Setting(f"tune3-{name}", (*SEARCHED_RECIPE, *overrides, *TUNE), seeds=(0, 1))
          for name, overrides in TUNING_3.items()),
    ]
    return {s.name: s for s in rows}


SETTINGS = _settings()
# The full-data yardstick (gradual magnitude pruning with labels on all 50,000 images): about an
# hour and a half on one core, so only when named; its committed run came from a GPU, in bfloat16.
REFERENCE = Setting("gmp_full", ("method=gmp_full", "data.batch_size=128", "method.trainer.lr=0.02",
                                 "method.trainer.epochs=30", "trainer.check_val_every_n_epoch=5",
                                 "trainer.precision=bf16-mixed"))
MARK_START, MARK_END = "<!-- cifar10-grid:start -->", "<!-- cifar10-grid:end -->"


def prune_command(data: str, overrides: list[str], run_dir: Path) -> list[str]:
    """One ``unipts-prune`` of the experiment on ``data`` into ``run_dir``, through this Python (a
    machine without the project's venv runs it too)."""
    return [sys.executable, "-m", "unipts.cli.prune", EXPERIMENT, f"data.root={data}",
            "trainer.enable_progress_bar=false", *overrides, f"hydra.run.dir={run_dir}"]


def run_one(run_id: str, overrides: list[str], data: str, out: Path, kept: Path, extra: list[str] = ()) -> None:
    """Run one job (unless its summary is kept already) and keep its summary and overrides."""
    keep = kept / run_id
    if (keep / "summary.json").is_file():
        return
    run_dir = out / run_id
    overrides = [_unlabeled_folder(o, data, out) if o.startswith("calib.root=UNLABELED/") else o for o in overrides]
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted attempt: start it afresh
    command = prune_command(data, [*overrides, *extra], run_dir)
    print("+", " ".join(command), flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        print(f"  failed ({done.returncode}): see {run_dir.parent / (run_dir.name + '.log')}", flush=True)
        return
    (keep / ".hydra").mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / "summary.json", keep / "summary.json")
    shutil.copy2(run_dir / ".hydra" / "overrides.yaml", keep / ".hydra" / "overrides.yaml")
    if (run_dir / "sparsity_table.yaml").is_file():  # a searched table, reusable with allocation=table
        shutil.copy2(run_dir / "sparsity_table.yaml", keep / "sparsity_table.yaml")


def _unlabeled_folder(override: str, data: str, out: Path) -> str:
    """``calib.root=UNLABELED/seed<k>`` -> a folder holding, as PNG files with no labels and
    names that say nothing, the 1,024 training images that ``calib.seed=k`` draws: the labelled
    runs' calibration images, for the label-free comparison."""
    import torch
    from PIL import Image

    from unipts.data import calibration_indices, cifar10

    seed = int(override.rsplit("seed", 1)[1])
    folder = out / "unlabeled_images" / f"seed{seed}"
    if not folder.is_dir():
        splits = cifar10(data, REPO / "data")
        chosen = calibration_indices(splits.train_labels, 1024, seed)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        order = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(1000 + seed)).tolist()
        for name, i in enumerate(order):
            pixels = splits.train_plain.images[chosen[i]].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(tmp / f"{name:05d}.png")
        tmp.rename(folder)
    return f"calib.root={folder}"


# The config keys that change a run's result: a kept run must match what its setting runs today in
# every one of them. A key added after the run was made counts as the library's default (which keeps
# the old behaviour), so an experiment that turns it on makes the older runs stale.
RESULT_KEYS = ("method.name", "method.trainer", "model.name", "data.name", "data.batch_size", "data.augment", "seed", "eval_split",
               "validation", "sparsity", "calib.size", "calib.seed", "calib.balanced", "allocation", "objective",
               "finetune", "dynamic", "trainer.precision")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _flatten(child, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _result_config(config) -> dict:
    """The :data:`RESULT_KEYS` of a config (a composed one, or a summary's), flattened to dotted keys."""
    from omegaconf import OmegaConf

    config = OmegaConf.create(config)
    picked: dict = {}
    for key in {*RESULT_KEYS, "method.finetune", "method.gmp", "method.pot"}:  # the last three: older records
        node = OmegaConf.select(config, key)
        picked[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    picked = _as_parts(picked)
    out = {}
    for key in RESULT_KEYS:
        node = picked.get(key)
        out.update(_flatten(node, f"{key}.") if isinstance(node, dict) else {key: node})
    out.pop("allocation.path", None)  # a searched table's file: its absolute path differs between checkouts
    out.pop("objective._target_", None)  # the loss class objective.name names; runs recorded before it lack it
    # What the method does not read cannot make a run stale: the distillation settings outside UniPTS,
    # the fine-tune's in a method whose trainer does not read them, the search's under a fixed rule.
    ignored = [] if out["method.name"] == "unipts" else ["objective.", "dynamic."]
    if out.get("method.trainer._target_") not in FINETUNE_TRAINERS:
        ignored.append("finetune.")
    elif out.get("finetune.mix") in (None, "none"):
        ignored += ["finetune.mix_alpha", "finetune.mix_prob", "finetune.mix_until"]
    if out.get("allocation.rule") != "search":
        ignored += [f"allocation.{k}" for k in _search_options() if k != "rule"]
    if out.get("method.trainer.all_images"):  # trains on the whole training split whatever calib.size says
        ignored.append("calib.size")
    return {k: v for k, v in out.items() if not any(k == i or k.startswith(i) for i in ignored)}


# The trainers that read the few-shot fine-tune's settings (finetune.*).
FINETUNE_TRAINERS = ("unipts.methods.trainers.Distill", "unipts.methods.trainers.CrossEntropy")
# The schedule keys gmp_full read from finetune.* before its trainer had a schedule of its own.
GMP_SCHEDULE = ("epochs", "lr", "momentum", "weight_decay", "warmup_epochs")


def _as_parts(picked: dict) -> dict:
    """A record made before methods were recipes of parts (``method.finetune``, ``method.gmp``,
    ``method.pot``), in today's keys: a kept run is compared with its setting, never repeated for a
    rename. A record in today's keys passes unchanged."""
    finetune = picked.pop("method.finetune", None)
    gmp, pot = picked.pop("method.gmp", None), picked.pop("method.pot", None)
    if finetune is None:
        return picked
    if picked.get("method.name") == "gmp_full":  # its schedule was finetune's, its images calib.size's
        old = picked.get("finetune") or {}
        picked["method.trainer"] = {"_target_": "unipts.methods.trainers.GradualMagnitude",
                                    **{k: old.get(k) for k in GMP_SCHEDULE}, **(gmp or {}),
                                    "all_images": picked.get("calib.size") is None}
    elif finetune:  # UniPTS, and the one-shot methods built on it with method.finetune=true, distilled
        picked["method.trainer"] = {"_target_": "unipts.methods.trainers.Distill"}
    else:
        picked["method.trainer"] = None
    return picked


@functools.cache
def _search_options() -> tuple[str, ...]:
    import yaml

    from unipts import CONFIG_DIR

    return tuple(yaml.safe_load((Path(CONFIG_DIR) / "allocation" / "search.yaml").read_text()))


@contextlib.contextmanager
def _composed_results():
    """Inside: a function from overrides to the :data:`RESULT_KEYS` that ``unipts-prune`` composes
    with them today (unipts' own config, the CLI's version base)."""
    from hydra import compose, initialize_config_dir

    from unipts import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda *overrides: _result_config(compose("prune", overrides=list(overrides)))


def stale_runs(kept: Path, settings: list[Setting]) -> dict[str, str]:
    """Kept runs whose recorded config differs, in a key that changes the result, from what their
    setting's overrides compose today (a default changed after they ran): run id -> the first
    difference. Such a run no longer measures its setting."""
    stale = {}
    with _composed_results() as results:
        library = results()
        for setting in settings:
            for rid, overrides in setting.runs():
                path = kept / rid / "summary.json"
                if not path.is_file():
                    continue
                overrides = [o for o in overrides if not o.startswith("calib.root=")]
                today = results(EXPERIMENT, *overrides)
                then = {**library, **_result_config(json.loads(path.read_text())["config"])}
                diff = [k for k in today if k in then and today[k] != then[k]]
                if diff:
                    stale[rid] = f"{diff[0]}: ran with {then[diff[0]]!r}, the setting gives {today[diff[0]]!r} today"
    return stale


def result_changing(overrides: list[str]) -> dict[str, str]:
    """Those of ``overrides`` that change a result key of a UniPTS run (each alone, on the
    experiment's defaults): override -> the first key it changes. ``--override`` is for how runs
    execute; anything else would keep runs that are not what their setting's name says."""
    out = {}
    with _composed_results() as results:
        base = results(EXPERIMENT)
        for override in overrides:
            changed = results(EXPERIMENT, override)
            diff = [k for k in {*base, *changed} if base.get(k) != changed.get(k)]
            if diff:
                out[override] = sorted(diff)[0]
    return out


def kept_rows(kept: Path) -> list[dict]:
    """One row per kept run: the collected summary fields plus its setting (the run id's first part)."""
    rows = []
    for path in sorted(kept.rglob("summary.json")):
        rel = path.parent.relative_to(kept)
        row = {"setting": rel.parts[0], **summary_row(path, kept)}
        if row["search_forward_images"] is None:
            row["search_forward_images"] = _forward_images(json.loads(path.read_text()))
        rows.append(row)
    return rows


def _forward_images(summary: dict) -> int | None:
    """The search's forward images of a summary written before it reported them: its evaluations
    times the images its settings pass per evaluation (None without a search)."""
    if not summary.get("search_evaluations"):
        return None
    from unipts.search import images_per_evaluation

    a = summary["config"]["allocation"]
    return summary["search_evaluations"] * images_per_evaluation(summary["calib_size"], a["bn_images"],
                                                                 a["fitness_images"], a["fitness_on_bn_images"],
                                                                 a["max_images"])


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation of top-1 per (setting, target), with the number of seeds."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["target_sparsity"]), []).append(r)
    out = []
    for (setting, target), runs in groups.items():
        top1 = [r["top1"] for r in runs]
        out.append({"setting": setting, "target_sparsity": target, "n": len(runs), "top1_mean": statistics.fmean(top1),
                    "top1_std": statistics.stdev(top1) if len(top1) > 1 else float("nan"),
                    "achieved_sparsity": statistics.fmean(r["achieved_sparsity"] for r in runs),
                    "total_s": statistics.fmean(r["total_s"] or 0.0 for r in runs),
                    "search_s": statistics.fmean(r["search_s"] or 0.0 for r in runs),
                    "search_forward_images": statistics.fmean(r["search_forward_images"] or 0 for r in runs),
                    "eval_split": runs[0]["eval_split"]})
    return sorted(out, key=lambda a: (a["eval_split"] != "test", a["target_sparsity"], -a["top1_mean"]))


def verdict(a: dict, b: dict) -> str:
    """'a > b', 'a < b' or 'tie': a difference within the larger standard deviation is a tie."""
    spread = max(x for x in (a["top1_std"], b["top1_std"], 0.0) if not math.isnan(x))
    diff = a["top1_mean"] - b["top1_mean"]
    return "tie" if abs(diff) <= spread else (">" if diff > 0 else "<")


def _pm(a: dict) -> str:
    std = "" if math.isnan(a["top1_std"]) else f" ± {a['top1_std']:.4f}"
    return f"{a['top1_mean']:.4f}{std}"


def report_table(aggs: list[dict]) -> str:
    lines = ["| setting | target | seeds | top-1 (mean ± std) | achieved sparsity | wall s (mean) |", "|---|---|---|---|---|---|"]
    lines += [f"| {a['setting']} | {a['target_sparsity']} | {a['n']} | {_pm(a)} | {a['achieved_sparsity']:.4f} | "
              f"{a['total_s']:.0f} |" for a in aggs]
    return "\n".join(lines) + "\n"


def comparisons(aggs: list[dict]) -> str:
    """UniPTS against the best baseline at each sparsity, and the yardstick at 0.9."""
    by = {(a["setting"], a["target_sparsity"]): a for a in aggs if a["eval_split"] == "test"}
    lines = []
    for target in TARGETS:
        mine = by.get(("unipts", target))
        baselines = [a for (s, t), a in by.items() if t == target and (s == "pot" or s.startswith("magnitude-"))]
        if mine and baselines:
            best = max(baselines, key=lambda a: a["top1_mean"])
            lines.append(f"- {target}: unipts {_pm(mine)} vs best baseline {best['setting']} {_pm(best)}: "
                         f"{100 * (mine['top1_mean'] - best['top1_mean']):+.2f} points ({verdict(mine, best)})")
    mine = by.get(("unipts", 0.9))
    if mine is None:
        return "\n".join(lines) + "\n"
    ref = by.get(("gmp_full", 0.9))
    if ref:
        lines.append(f"- 0.9: unipts {_pm(mine)} vs gmp_full (all 50,000 labelled images) {_pm(ref)}: "
                     f"{100 * (mine['top1_mean'] - ref['top1_mean']):+.2f} points")
    unlabeled = by.get(("unlabeled", 0.9))
    if unlabeled:
        lines.append(f"- 0.9: the same calibration images without labels (calib.root) {_pm(unlabeled)} vs the default "
                     f"recipe {_pm(mine)}: {100 * (unlabeled['top1_mean'] - mine['top1_mean']):+.2f} points")
    lines += _search_costs(by)
    for (setting, target), a in sorted(by.items()):
        base_name = getattr(SETTINGS.get(setting), "against", None)
        base = by.get((base_name, 0.9)) if target == 0.9 else None
        if base:
            name = "the default recipe" if base is mine else base_name
            lines.append(f"- 0.9, {setting}: {_pm(a)}, {100 * (a['top1_mean'] - base['top1_mean']):+.2f} points "
                         f"against {name} ({verdict(a, base)})")
    return "\n".join(lines) + "\n"


def _search_costs(by: dict) -> list[str]:
    """The experiment's search (method=unipts) and the cheaper ones against the released sizes, all
    under the recipe they were measured with (the previous one): forward images (evaluations x images
    per evaluation) and top-1 at 0.9. Equal quality is a mean within 0.3 points (issue 13's bar) or better."""
    released = by.get(("ablation-search-released-sizes", 0.9))
    if released is None:
        return []
    lines = []
    for name, a in (("ablation-previous-recipe (the experiment's search)", by.get(("ablation-previous-recipe", 0.9))),
                    ("ablation-top1-search", by.get(("ablation-top1-search", 0.9)))):
        if a is None or not a["search_forward_images"]:
            continue
        diff = 100 * (a["top1_mean"] - released["top1_mean"])
        lines.append(f"- 0.9, the search's cost: {name} {a['search_forward_images']:,.0f} forward images, "
                     f"{a['search_s']:.0f} s, top-1 {_pm(a)} vs the released sizes "
                     f"{released['search_forward_images']:,.0f} forward images, {released['search_s']:.0f} s, "
                     f"{_pm(released)}: {released['search_forward_images'] / a['search_forward_images']:.1f}x fewer "
                     f"images, {diff:+.2f} points ({'equal quality' if diff >= -0.3 else 'worse'} by the "
                     f"0.3-point bar; {verdict(a, released)})")
    return lines


def write_csv(rows: list[dict], path: Path) -> None:
    columns = ["setting", "seed", "target_sparsity", "achieved_sparsity", "top1", "top5", "dense_top1", "calib_size",
               "eval_split", "method", "allocation", "objective", "masks", "pattern", "search_s",
               "search_forward_images", "finetune_s", "total_s", "overrides", "run_dir"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _std(a: dict) -> float:
    return 0.0 if math.isnan(a["top1_std"]) else a["top1_std"]


def plot(aggs: list[dict], dense: float, path: Path) -> None:
    """Left: the methods over sparsity. Right: every setting at 0.9 side by side (the ablations
    among them), with the default recipe and the full-data yardstick as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = [a for a in aggs if a["eval_split"] == "test" and not a["setting"].startswith("nm-")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.1]})
    series: dict[str, list[dict]] = {}
    for a in test:
        # the methods, and the recipe the default replaced (its unlabeled twin only on the right)
        name = a["setting"]
        if name == "ablation-searched-recipe" or not (name.startswith(("ablation-", "unlabeled-"))):
            series.setdefault(name, []).append(a)
    for name, points in sorted(series.items()):
        points.sort(key=lambda a: a["target_sparsity"])
        left.errorbar([a["target_sparsity"] for a in points], [a["top1_mean"] for a in points],
                      yerr=[_std(a) for a in points], fmt="o-" if len(points) > 1 else "x", capsize=3, label=name)
    if not math.isnan(dense):
        left.axhline(dense, color="gray", linestyle="--", label="dense")
    left.set_xlabel("global sparsity")
    left.set_ylabel("top-1 (CIFAR-10 test), mean ± std over seeds")
    left.set_title("ResNet-20 / CIFAR-10, 1,024 calibration images")
    left.legend(fontsize=7)
    at_09 = sorted((a for a in test if a["target_sparsity"] == 0.9 and a["top1_mean"] > 0.7), key=lambda a: a["top1_mean"])
    right.errorbar([a["top1_mean"] for a in at_09], range(len(at_09)), xerr=[_std(a) for a in at_09], fmt="o",
                   capsize=3)
    right.set_yticks(range(len(at_09)), [f"{a['setting']} ({a['n']})" for a in at_09], fontsize=7)
    for name, style in (("unipts", ":"), ("gmp_full", "--")):
        ref = next((a for a in at_09 if a["setting"] == name), None)
        if ref:
            right.axvline(ref["top1_mean"], color="gray", linestyle=style, linewidth=1)
    right.set_xlabel("top-1 at 0.9, mean ± std (seeds in brackets); lines: unipts, gmp_full")
    right.set_title("At 0.9: recipe, ablations, yardstick (one-shot rows below 0.7 left out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_benchmarks(aggs: list[dict], dense: float, command: str) -> None:
    test = [a for a in aggs if a["eval_split"] == "test"]
    val = [a for a in aggs if a["eval_split"] == "val"]
    section = (f"{MARK_START}\nGenerated by `{command}`; dense top-1 {dense:.4f} (test). `calib.size=1024` "
               "(gmp_full: the whole training split); seed and calibration subset vary together; std is the sample "
               "standard deviation over the seeds, and a difference within it is called a tie.\n\n"
               f"{comparisons(aggs)}\n{report_table(test)}")
    if val:
        section += ("\nChoosing the recipe on the validation split (`eval_split=val`: 5,000 training images held out "
                    f"from calibration; top-1 is validation accuracy):\n\n{report_table(val)}")
    section += MARK_END
    rewrite_section(REPO / "BENCHMARKS.md", MARK_START, MARK_END, section, "## CIFAR-10 ResNet-20 grid")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("UNIPTS_CIFAR10"), help="CIFAR-10 archive or folder")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "cifar10_resnet20",
                   help="where the run directories go (checkpoints and logs; not kept)")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=[*SETTINGS, REFERENCE.name],
                   help="default: every setting but gmp_full (long), which runs only when named")
    p.add_argument("--seeds", nargs="*", type=int, help="only these seeds (default: each setting's own)")
    p.add_argument("--targets", nargs="*", type=float, help="only these sparsities (default: each setting's own)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each is its own process; give each a "
                   "thread with --override runtime.threads=1 on a CPU)")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="added to every run: how runs execute (trainer.accelerator=gpu, runtime.threads=1, "
                        "data.num_workers=0); one that changes what a run measures is refused")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--list", action="store_true", help="print every run and whether it is kept, then stop")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="where runs are kept and the CSV and plot go; BENCHMARKS.md is rewritten only for the default")
    args = p.parse_args(argv)
    kept = args.results / KEPT.name
    chosen = [SETTINGS.get(name, REFERENCE) for name in args.settings]
    jobs = [(rid, o) for s in chosen for rid, o in s.runs()
            if (args.seeds is None or int(rid.rsplit("seed", 1)[1]) in args.seeds)
            and (args.targets is None or float(rid.split("/")[1][1:]) in args.targets)]
    changing = result_changing(args.override)
    if changing:
        p.error("--override " + ", ".join(f"{o} changes {k}" for o, k in changing.items()) + ": that is what a "
                "run measures; give it in a setting (--override is for how runs execute: device, threads, workers)")
    stale = stale_runs(kept, [*SETTINGS.values(), REFERENCE])
    if args.list:
        for rid, _ in jobs:
            state = "stale" if rid in stale else "kept " if (kept / rid / "summary.json").is_file() else "to do"
            print(f"{state} {rid}" + (f"  ({stale[rid]})" if rid in stale else ""))
        return
    if stale:  # a table mixing them would compare settings that are not what their names say
        for rid, why in sorted(stale.items()):
            print(f"stale: {rid}: {why}", file=sys.stderr)
        p.error(f"{len(stale)} kept run(s) no longer match their setting (above): state the setting's old "
                f"values in its overrides, or move the runs to a setting that has them")
    if not args.report_only:
        if not args.data:
            p.error("--data (or UNIPTS_CIFAR10) is required to run the grid")
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # threads: each only waits on its process
            for done in [pool.submit(run_one, rid, o, args.data, args.out, kept, args.override) for rid, o in jobs]:
                done.result()
    rows = kept_rows(kept)
    if not rows:
        p.error(f"no kept runs under {kept}")
    write_csv(rows, args.results / "cifar10_resnet20.csv")
    aggs = aggregate(rows)
    dense = next((r["dense_top1"] for r in rows if r["eval_split"] == "test" and r["dense_top1"]), float("nan"))
    plot(aggs, dense, args.results / "cifar10_resnet20.png")
    if args.results.resolve() == RESULTS.resolve():  # a trial elsewhere leaves the committed figures alone
        update_benchmarks(aggs, dense, "make bench")
    print(report_table(aggs) + "\n" + comparisons(aggs))


if __name__ == "__main__":
    main()
