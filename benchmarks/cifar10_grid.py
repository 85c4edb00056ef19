"""The CIFAR-10 benchmark grids: every method on the same dense model and test split, each UniPTS
row, baseline and ablation at several seeds; results into a CSV, a plot and BENCHMARKS.md.

    make bench                                                  # every default setting, then the report
    python benchmarks/cifar10_grid.py --data ../shared/data/cifar10-jpeg.tar.gz --settings unipts pot
    python benchmarks/cifar10_grid.py --data ... --settings gmp_full   # the grid's reference (long): only when named
    python benchmarks/cifar10_grid.py --report-only               # the report from the kept results
    python benchmarks/cifar10_grid.py --list                      # the runs, and which are still to do
    python benchmarks/cifar10_grid.py --data ... --jobs 8 --override trainer.accelerator=gpu  # 8 at once on a GPU
    python benchmarks/cifar10_grid.py --grid cifar10_resnet20 --list   # a grid by name, or a file

A grid is a file in ``benchmarks/grids/`` (read by ``grid_file.py``): the experiment, seeds and
sparsities, where its runs are kept, and its settings, each a name and the Hydra overrides its runs
share. Every run is one ``unipts-prune experiment=<the grid's>`` in its own run directory under
``--out``; ``seed`` and the calibration subset (``calib.seed``) vary together. A finished run's
``summary.json`` and Hydra overrides are kept under ``benchmarks/results/<the grid's results>/``
(committed), and a run whose summary is kept there is not run again: a grid takes many hours on a
2-core machine and continues where it stopped. The ``tune*`` settings score on held-out training
images (``eval_split=val``) and are how the recipe's defaults were chosen; the others score on the
test split."""

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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from unipts.collect import row as summary_row  # noqa: E402
from grid_file import Grid, GridError, Setting, load_grid  # noqa: E402  (benchmarks/grid_file.py, beside this file)
from sections import rewrite_section  # noqa: E402  (benchmarks/sections.py, beside this file)

RESULTS = REPO / "benchmarks" / "results"
DEFAULT_GRID = "cifar10_resnet20"


def prune_command(experiment: str, data: str, overrides: list[str], run_dir: Path) -> list[str]:
    """One ``unipts-prune`` of ``experiment`` on ``data`` into ``run_dir``, through this Python (a
    machine without the project's venv runs it too)."""
    return [sys.executable, "-m", "unipts.cli.prune", f"experiment={experiment}", f"data.root={data}",
            "trainer.enable_progress_bar=false", *overrides, f"hydra.run.dir={run_dir}"]


def run_one(experiment: str, run_id: str, overrides: list[str], data: str, out: Path, kept: Path,
            extra: list[str] = ()) -> None:
    """Run one job (unless its summary is kept already) and keep its summary and overrides."""
    keep = kept / run_id
    if (keep / "summary.json").is_file():
        return
    run_dir = out / run_id
    overrides = [_unlabeled_folder(o, data, out) if o.startswith("calib.root=UNLABELED/") else o for o in overrides]
    # An interrupted attempt continues from its last epoch where it wrote one (the run refuses a
    # checkpoint of other settings), else starts afresh: a full-data run outlasts a session here.
    resume = ["ckpt_path=last"] if (run_dir / "checkpoints" / "last.ckpt").is_file() else []
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    command = prune_command(experiment, data, [*overrides, *extra, *resume], run_dir)
    print("+", " ".join(command), flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "a" if resume else "w") as log:
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
RESULT_KEYS = ("method.name", "method.trainer", "method.pruner", "model.name", "data.name", "data.batch_size", "data.augment", "seed", "eval_split",
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
    for key in {*RESULT_KEYS, "method.finetune", "method.gmp", "method.pot", "pot"}:  # the last four: older records
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
    gmp, pot = picked.pop("method.gmp", None), picked.pop("method.pot", None) or picked.pop("pot", None)
    picked.pop("pot", None)
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
    picked["method.pruner"] = {"_target_": "unipts.methods.Pot", **pot} if pot else None  # POT's were method.pot
    return picked


@functools.cache
def _search_options() -> tuple[str, ...]:
    import yaml

    from unipts import CONFIG_DIR

    return tuple(yaml.safe_load((Path(CONFIG_DIR) / "allocation" / "search.yaml").read_text()))


@contextlib.contextmanager
def _composed_results(experiment: str):
    """Inside: a function from overrides to the :data:`RESULT_KEYS` that ``unipts-prune`` composes
    with them on ``experiment`` today (unipts' own config, the CLI's version base); with no
    experiment, the library's defaults."""
    from hydra import compose, initialize_config_dir

    from unipts import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        def results(*overrides: str, on_experiment: bool = True) -> dict:
            base = [f"experiment={experiment}"] if on_experiment else []
            return _result_config(compose("prune", overrides=[*base, *overrides]))

        yield results


def stale_runs(kept: Path, settings: list[Setting], experiment: str) -> dict[str, str]:
    """Kept runs whose recorded config differs, in a key that changes the result, from what their
    setting's overrides compose today (a default changed after they ran): run id -> the first
    difference. Such a run no longer measures its setting."""
    stale = {}
    with _composed_results(experiment) as results:
        library = results(on_experiment=False)
        for setting in settings:
            for rid, overrides in setting.runs():
                path = kept / rid / "summary.json"
                if not path.is_file():
                    continue
                overrides = [o for o in overrides if not o.startswith("calib.root=")]
                today = results(*overrides)
                then = {**library, **_result_config(json.loads(path.read_text())["config"])}
                diff = [k for k in today if k in then and today[k] != then[k]]
                if diff:
                    stale[rid] = f"{diff[0]}: ran with {then[diff[0]]!r}, the setting gives {today[diff[0]]!r} today"
    return stale


def result_changing(overrides: list[str], experiment: str) -> dict[str, str]:
    """Those of ``overrides`` that change a result key of a UniPTS run (each alone, on the
    experiment's defaults): override -> the first key it changes. ``--override`` is for how runs
    execute; anything else would keep runs that are not what their setting's name says."""
    out = {}
    with _composed_results(experiment) as results:
        base = results()
        for override in overrides:
            changed = results(override)
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


def method_table(aggs: list[dict], grid: Grid) -> str:
    """Top-1 of each test-split setting at each of the grid's sparsities, "mean ± std (seeds)", the
    best at the grid's target first; a sparsity a setting has no run at is left blank (N:M rows,
    whose sparsity the pattern sets, are in the flat table only)."""
    cells = {(a["setting"], a["target_sparsity"]): a for a in aggs
             if a["eval_split"] == "test" and a["target_sparsity"] in grid.targets and not a["setting"].startswith("nm-")}
    names = {setting for setting, _ in cells}

    def at_target(name: str) -> float:
        a = cells.get((name, grid.target))
        return a["top1_mean"] if a else -1.0

    lines = ["| setting | " + " | ".join(str(t) for t in grid.targets) + " |",
             "|---|" + "---|" * len(grid.targets)]
    for name in sorted(names, key=lambda n: (-at_target(n), n)):
        row = [f"{_pm(a)} ({a['n']})" if (a := cells.get((name, t))) else "" for t in grid.targets]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# The one-shot baselines' settings are named after their method (pot, sparsegpt-sparse-inputs,
# magnitude-erk, ...): the best of them at a sparsity is UniPTS's comparison.
ONE_SHOT = ("pot", "sparsegpt", "wanda", "magnitude")


def is_one_shot(setting: str) -> bool:
    return setting.split("-", 1)[0] in ONE_SHOT


def comparisons(aggs: list[dict], grid: Grid) -> str:
    """UniPTS against the best baseline at each of the grid's sparsities, and the yardstick (its
    reference) and the label-free row at the grid's target, and each setting against its ``against``
    at every sparsity both have test rows at."""
    by = {(a["setting"], a["target_sparsity"]): a for a in aggs if a["eval_split"] == "test"}
    at, ref_name = grid.target, grid.reference
    lines = []
    for target in grid.targets:
        mine = by.get(("unipts", target))
        baselines = [a for (s, t), a in by.items() if t == target and is_one_shot(s)]
        if mine and baselines:
            best = max(baselines, key=lambda a: a["top1_mean"])
            lines.append(f"- {target}: unipts {_pm(mine)} vs best baseline {best['setting']} {_pm(best)}: "
                         f"{100 * (mine['top1_mean'] - best['top1_mean']):+.2f} points ({verdict(mine, best)})")
    mine = by.get(("unipts", at))
    if mine is None:
        return "\n".join(lines) + "\n"
    ref = by.get((ref_name, at))
    if ref:
        lines.append(f"- {at}: unipts {_pm(mine)} vs {ref_name} (all 50,000 labelled images) {_pm(ref)}: "
                     f"{100 * (mine['top1_mean'] - ref['top1_mean']):+.2f} points")
    unlabeled = by.get(("unlabeled", at))
    if unlabeled:
        lines.append(f"- {at}: the same calibration images without labels (calib.root) {_pm(unlabeled)} vs the default "
                     f"recipe {_pm(mine)}: {100 * (unlabeled['top1_mean'] - mine['top1_mean']):+.2f} points")
    lines += _search_costs(by, at)
    for (setting, target), a in sorted(by.items()):
        base_name = getattr(grid.settings.get(setting), "against", None)
        base = by.get((base_name, target))  # at each sparsity both were measured at
        if base:
            name = "the default recipe" if base_name == "unipts" else base_name
            lines.append(f"- {target}, {setting}: {_pm(a)}, {100 * (a['top1_mean'] - base['top1_mean']):+.2f} points "
                         f"against {name} ({verdict(a, base)})")
    return "\n".join(lines) + "\n"


def _search_costs(by: dict, at: float) -> list[str]:
    """The experiment's search (method=unipts) and the cheaper ones against the released sizes, all
    under the recipe they were measured with (the previous one): forward images (evaluations x images
    per evaluation) and top-1 at ``at``. Equal quality is a mean within 0.3 points (issue 13's bar) or
    better. Nothing for a grid without these settings."""
    released = by.get(("ablation-search-released-sizes", at))
    if released is None:
        return []
    lines = []
    for name, a in (("ablation-previous-recipe (the experiment's search)", by.get(("ablation-previous-recipe", at))),
                    ("ablation-top1-search", by.get(("ablation-top1-search", at)))):
        if a is None or not a["search_forward_images"]:
            continue
        diff = 100 * (a["top1_mean"] - released["top1_mean"])
        lines.append(f"- {at}, the search's cost: {name} {a['search_forward_images']:,.0f} forward images, "
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


def plot(aggs: list[dict], dense: float, path: Path, grid: Grid) -> None:
    """Left: the methods over sparsity. Right: every setting at the grid's target side by side (the
    ablations among them), with the default recipe and the full-data yardstick as lines."""
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
    left.set_title(f"{grid.title}, 1,024 calibration images")
    left.legend(fontsize=7)
    at = grid.target
    shown = sorted((a for a in test if a["target_sparsity"] == at and a["top1_mean"] > 0.7),
                   key=lambda a: a["top1_mean"])
    right.errorbar([a["top1_mean"] for a in shown], range(len(shown)), xerr=[_std(a) for a in shown], fmt="o",
                   capsize=3)
    right.set_yticks(range(len(shown)), [f"{a['setting']} ({a['n']})" for a in shown], fontsize=7)
    for name, style in (("unipts", ":"), (grid.reference, "--")):
        ref = next((a for a in shown if a["setting"] == name), None)
        if ref:
            right.axvline(ref["top1_mean"], color="gray", linestyle=style, linewidth=1)
    right.set_xlabel(f"top-1 at {at}, mean ± std (seeds in brackets); lines: unipts, {grid.reference}")
    right.set_title(f"At {at}: recipe, ablations, yardstick (one-shot rows below 0.7 left out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_benchmarks(aggs: list[dict], dense: float, command: str, grid: Grid) -> None:
    """The grid's generated section of BENCHMARKS.md, between markers of its own name."""
    start, end = f"<!-- {grid.name}-grid:start -->", f"<!-- {grid.name}-grid:end -->"
    test = [a for a in aggs if a["eval_split"] == "test"]
    val = [a for a in aggs if a["eval_split"] == "val"]
    section = (f"{start}\nGenerated by `{command}`; dense top-1 {dense:.4f} (test). `calib.size=1024` "
               f"({grid.reference}: the whole training split); seed and calibration subset vary together; std is "
               "the sample standard deviation over the seeds, and a difference within it is called a tie.\n\n"
               f"{comparisons(aggs, grid)}\nTop-1 by setting and sparsity (mean ± std, seeds in brackets), the best at "
               f"{grid.target} first:\n\n{method_table(aggs, grid)}\nEvery test-split row, with its sparsity and wall "
               f"time:\n\n{report_table(test)}")
    if val:
        section += ("\nChoosing the recipe on the validation split (`eval_split=val`: 5,000 training images held out "
                    f"from calibration; top-1 is validation accuracy):\n\n{report_table(val)}")
    section += end
    rewrite_section(REPO / "BENCHMARKS.md", start, end, section, f"## The {grid.title} grid's generated report")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default=DEFAULT_GRID,
                   help="a grid file, or the name of one in benchmarks/grids/ (default: %(default)s)")
    p.add_argument("--data", default=os.environ.get("UNIPTS_CIFAR10"), help="CIFAR-10 archive or folder")
    p.add_argument("--out", type=Path, help="where the run directories go (checkpoints and logs; not kept; "
                   "default: outputs/bench/<the grid's results>)")
    p.add_argument("--settings", nargs="*", help="default: every setting but the grid's reference (long), "
                   "which runs only when named")
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
    try:
        grid = load_grid(args.grid, RESULTS)
    except GridError as e:
        p.error(str(e))
    names = grid.default_settings() if args.settings is None else args.settings
    unknown = [name for name in names if name not in grid.settings]
    if unknown:
        p.error(f"--settings {unknown[0]}: not a setting of {grid.path}")
    kept = args.results / grid.results
    out = args.out or REPO / "outputs" / "bench" / grid.results
    jobs = [(rid, o) for name in names for rid, o in grid.settings[name].runs()
            if (args.seeds is None or int(rid.rsplit("seed", 1)[1]) in args.seeds)
            and (args.targets is None or float(rid.split("/")[1][1:]) in args.targets)]
    changing = result_changing(args.override, grid.experiment)
    if changing:
        p.error("--override " + ", ".join(f"{o} changes {k}" for o, k in changing.items()) + ": that is what a "
                "run measures; give it in a setting (--override is for how runs execute: device, threads, workers)")
    stale = stale_runs(kept, list(grid.settings.values()), grid.experiment)
    if args.list:
        for rid, _ in jobs:
            state = "stale" if rid in stale else "kept " if (kept / rid / "summary.json").is_file() else "to do"
            print(f"{state} {rid}" + (f"  ({stale[rid]})" if rid in stale else ""))
        return
    if stale:  # a table mixing them would compare settings that are not what their names say
        for rid, why in sorted(stale.items()):
            print(f"stale: {rid}: {why}", file=sys.stderr)
        p.error(f"{len(stale)} kept run(s) no longer match their setting (above): state the setting's old "
                f"values in {grid.path.name}, or move the runs to a setting that has them")
    if not args.report_only:
        if not args.data:
            p.error("--data (or UNIPTS_CIFAR10) is required to run the grid")
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # threads: each only waits on its process
            for done in [pool.submit(run_one, grid.experiment, rid, o, args.data, out, kept, args.override)
                         for rid, o in jobs]:
                done.result()
    rows = kept_rows(kept)
    if not rows:
        p.error(f"no kept runs under {kept}")
    write_csv(rows, args.results / f"{grid.results}.csv")
    aggs = aggregate(rows)
    dense = next((r["dense_top1"] for r in rows if r["eval_split"] == "test" and r["dense_top1"]), float("nan"))
    plot(aggs, dense, args.results / f"{grid.results}.png", grid)
    if args.results.resolve() == RESULTS.resolve():  # a trial elsewhere leaves the committed figures alone
        command = "make bench" + ("" if grid.name == DEFAULT_GRID else f' ARGS="--grid {grid.name}"')
        update_benchmarks(aggs, dense, command, grid)
    print(report_table(aggs) + "\n" + comparisons(aggs, grid))


if __name__ == "__main__":
    main()
