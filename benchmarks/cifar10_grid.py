"""The benchmark grid on CIFAR-10 ResNet-20: every method on the same dense model, the same
1,024 calibration images and the same test split; results into a CSV, a plot and BENCHMARKS.md.

    make bench                                                    # every default group, then the report
    python benchmarks/cifar10_grid.py --data ../shared/data/cifar10-jpeg.tar.gz --groups magnitude pot
    python benchmarks/cifar10_grid.py --data ... --groups gmp_full   # the long full-data reference
    python benchmarks/cifar10_grid.py --report-only                 # report only

Each group is one Hydra multirun of ``unipts-prune`` (``experiment=cifar10_resnet20``: the
committed dense model ``assets/cifar10_resnet20.pt``, ``calib.size=1024``) into
``<out>/<group>/``. The ``tune_*`` groups score on held-out training images (``eval_split=val``)
and are how the config defaults were chosen; the others score on the test split. The report
reads every ``summary.json`` under ``<out>``, plus the committed reference runs under
``benchmarks/results/reference/`` that ``<out>`` lacks, and nothing else."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from unipts.collect import collect, to_csv, to_markdown  # noqa: E402

TARGETS = "sparsity.target=0.5,0.7,0.9"
# Hyper-parameters are chosen on 5,000 training images held out from calibration (eval_split=val),
# never on the test images; the chosen values are the config defaults the test groups then use.
TUNE = ["sparsity.target=0.9", "eval_split=val"]
TUNE_GROUPS: dict[str, list[str]] = {
    "tune_search_256x25": ["method=unipts", *TUNE, "allocation.bn_images=256", "allocation.fitness_images=256"],
    "tune_search_512x16": ["method=unipts", *TUNE, "allocation.max_images=null", "allocation.bn_images=256",
                           "allocation.fitness_images=512", "allocation.generations=16"],
    "tune_pot": ["method=pot", *TUNE, "pot.lr_weight=1.0e-4,1.0e-3,1.0e-2"],
}
TEST_GROUPS: dict[str, list[str]] = {
    "magnitude": ["method=magnitude", "allocation=uniform,global,erk,lamp", TARGETS],
    "pot": ["method=pot", TARGETS],
    "unipts": ["method=unipts", TARGETS],
    "ablation_kd": ["method=unipts", "sparsity.target=0.9", "objective=kd"],
    "ablation_uniform": ["method=unipts", "sparsity.target=0.9", "allocation=uniform"],
    "ablation_erk": ["method=unipts", "sparsity.target=0.9", "allocation=erk"],
    "ablation_static": ["method=unipts", "sparsity.target=0.9", "dynamic.interval=0"],
    "ablation_released": ["method=unipts", "sparsity.target=0.9", "allocation.released_quirks=true"],
    "nm_2_4": ["method=unipts,magnitude", "sparsity.pattern=2:4", "sparsity.target=0.5"],
    "nm_1_4": ["method=unipts,magnitude", "sparsity.pattern=1:4", "sparsity.target=0.75"],
}
# The full-data yardstick: about an hour and a half on one core, so not in the default run.
REFERENCE_GROUPS: dict[str, list[str]] = {
    "gmp_full": ["method=gmp_full", "sparsity.target=0.9", "calib.size=null", "data.batch_size=128",
                 "finetune.lr=0.02", "finetune.epochs=30", "trainer.check_val_every_n_epoch=5",
                 "trainer.log_every_n_steps=50"],
}
GROUPS = {**TUNE_GROUPS, **TEST_GROUPS, **REFERENCE_GROUPS}
DEFAULT_GROUPS = [*TUNE_GROUPS, *TEST_GROUPS]
MARK_START, MARK_END = "<!-- cifar10-grid:start -->", "<!-- cifar10-grid:end -->"


def run_group(name: str, data: str, out: Path, extra: list[str]) -> None:
    command = [str(REPO / ".venv" / "bin" / "unipts-prune"), "-m", "experiment=cifar10_resnet20", f"data.root={data}",
               "seed=0", "trainer.enable_progress_bar=false", *GROUPS[name], *extra, f"hydra.sweep.dir={out / name}"]
    print("+", " ".join(command), flush=True)
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)


def label(row: dict) -> str:
    """Method and what sets it apart: allocation, objective, masks, N:M pattern, released quirks."""
    pattern = row.get("pattern")
    suffix = f", {pattern}" if pattern and pattern != "unstructured" else ""
    if row["method"] != "unipts":
        return f"{row['method']} ({row['allocation']}{suffix})"
    parts = [row["allocation"], row["objective"], row["masks"]]
    if "released_quirks=true" in (row.get("overrides") or "").lower():
        parts.append("released quirks")
    return "unipts (" + ", ".join(parts) + suffix + ")"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        series.setdefault(label(r), []).append((r["target_sparsity"], r["top1"]))
    for name, points in sorted(series.items()):
        points.sort()
        style = "o-" if len(points) > 1 else "x"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name)
    dense = [r["dense_top1"] for r in rows if r["dense_top1"] is not None]
    if dense:
        ax.axhline(dense[0], color="gray", linestyle="--", label="dense")
    ax.set_xlabel("global sparsity")
    ax.set_ylabel("top-1 (CIFAR-10 test)")
    ax.set_title("ResNet-20 / CIFAR-10, 1,024 calibration images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COMMON = ("experiment=", "data.root=", "seed=", "method=", "sparsity.target=", "eval_split=")


def tuned(row: dict) -> str:
    """The overrides that set a tuning run apart from the others of its method."""
    return " ".join(o for o in (row.get("overrides") or "").split() if not o.startswith(COMMON))


def update_benchmarks(test_rows: list[dict], val_rows: list[dict], command: str) -> None:
    order = {"magnitude": 0, "pot": 1, "unipts": 2, "gmp_full": 3}
    test_rows = sorted(({**r, "setting": label(r)} for r in test_rows),
                       key=lambda r: (order.get(r["method"], 9), r["setting"], r["target_sparsity"]))
    val_rows = [{**r, "setting": label(r), "tuned": tuned(r)} for r in val_rows]
    columns = ["setting", "target_sparsity", "achieved_sparsity", "top1", "search_s", "finetune_s", "total_s"]
    dense = next((r["dense_top1"] for r in test_rows if r["dense_top1"] is not None), float("nan"))
    section = (f"{MARK_START}\nGenerated by `{command}`; dense top-1 {dense:.4f} (test). Every row: seed 0, "
               f"`calib.size=1024` (gmp_full: the whole training split). setting: method (allocation, objective, "
               f"masks, pattern).\n\n{to_markdown(test_rows, columns)}\n"
               "Hyper-parameter choice on the validation split (`eval_split=val`: 5,000 training images held out "
               "from calibration; top1 is validation accuracy; target 0.9):\n\n"
               f"{to_markdown(val_rows, ['setting', 'tuned', 'top1', 'search_s', 'total_s'])}{MARK_END}")
    path = REPO / "BENCHMARKS.md"
    text = path.read_text()
    if MARK_START in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text += f"\n## CIFAR-10 ResNet-20 grid (issue 4)\n\n{section}\n"
    path.write_text(text)


def gather(out: Path, reference: Path) -> list[dict]:
    """Every summary under ``out``, plus the committed reference runs that ``out`` does not hold."""
    rows = collect(out) if out.is_dir() else []
    if reference.is_dir():
        present = {r["run_dir"].split("/")[0] for r in rows}
        rows += [r for r in collect(reference) if r["run_dir"].split("/")[0] not in present]
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("UNIPTS_CIFAR10"), help="CIFAR-10 archive or folder")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "cifar10_resnet20")
    p.add_argument("--groups", nargs="*", default=DEFAULT_GROUPS, choices=list(GROUPS),
                   help="default: the tuning and test groups; gmp_full (long) only when named")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("extra", nargs="*", help="more Hydra overrides for every run (e.g. finetune.epochs=10)")
    args = p.parse_args(argv)
    if not args.report_only:
        if not args.data:
            p.error("--data (or UNIPTS_CIFAR10) is required to run the grid")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in args.groups:
            run_group(name, args.data, args.out, args.extra)
    rows = gather(args.out, args.results / "reference")
    test_rows = [r for r in rows if r["eval_split"] in (None, "test")]
    val_rows = [r for r in rows if r["eval_split"] == "val"]
    args.results.mkdir(parents=True, exist_ok=True)
    to_csv(test_rows, args.results / "cifar10_resnet20.csv")
    to_csv(val_rows, args.results / "cifar10_resnet20_val.csv")
    plot(test_rows, args.results / "cifar10_resnet20.png")
    update_benchmarks(test_rows, val_rows, "make bench")
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
