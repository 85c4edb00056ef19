"""Seconds per fine-tune epoch of a whole CIFAR-10 run (ResNet-20 unless ``--experiment`` names
another), float32 against bfloat16 autocast.

An isolated step (``bench_step.py``) shows what the convolutions gain; this times what a user
gets: ``unipts-prune experiment=cifar10_resnet20`` (or ``--experiment``'s) with its masks, feature
taps, mixing, data loading and Lightning's loop, from the run's own epoch log lines. ERK allocation (no search) and
no validation between the first and last epoch, so the window from the end of epoch 2 to the end
of epoch ``E - 2`` holds training alone. Precisions alternate, so a change of load hits each alike.

    python benchmarks/bench_epoch.py --data ../shared/data/cifar10-jpeg.tar.gz [--epochs 20] [--repeats 2] [--threads 2]
    python benchmarks/bench_epoch.py --data ... --experiment cifar10_mobilenetv2 --epochs 8 --repeats 1 --threads 1
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from cifar10_grid import prune_command  # benchmarks/cifar10_grid.py, beside this file

LINE = re.compile(r"^\[(?P<time>[\d-]+ [\d:,]+)\].* fine-tune: epoch (?P<epoch>\d+)/\d+")


def epoch_times(log: str) -> dict[int, datetime]:
    """Epoch number -> when its log line was written."""
    out = {}
    for line in log.splitlines():
        m = LINE.match(line)
        if m:
            out[int(m["epoch"])] = datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f")
    return out


def seconds_per_epoch(experiment: str, data: str, precision: str, epochs: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = ["sparsity.target=0.9", "allocation=erk", f"finetune.epochs={epochs}",
                     f"trainer.precision={precision}", f"runtime.threads={threads}",
                     "trainer.check_val_every_n_epoch=1000"]
        done = subprocess.run(prune_command(experiment, data, overrides, run_dir),
                              capture_output=True, text=True)
        if done.returncode != 0:  # the run's own one-line error, not a traceback of this script
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise SystemExit(f"error: the {precision} run failed: {last}")
        times = epoch_times((run_dir / "prune.log").read_text())
    first, last = 2, epochs - 2
    if first not in times or last not in times:
        raise SystemExit(f"error: the run's log has no line for epoch {first} or {last} (--epochs {epochs})")
    return (times[last] - times[first]).total_seconds() / (last - first)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 archive or folder")
    p.add_argument("--epochs", type=int, default=20, help="a multiple of 2, at least 8 (the log shows every 2nd)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    p.add_argument("--experiment", default="cifar10_resnet20", help="a CIFAR-10 experiment preset")
    args = p.parse_args(argv)
    if args.epochs < 8 or args.epochs % 2:
        p.error(f"--epochs: {args.epochs}; valid: an even number, at least 8")
    results = {prec: [] for prec in args.precisions}
    for _ in range(args.repeats):
        for prec in args.precisions:
            results[prec].append(seconds_per_epoch(args.experiment, args.data, prec, args.epochs, args.threads))
    base = statistics.median(results[args.precisions[0]])
    print(f"| precision | s per fine-tune epoch (median of {args.repeats}) | runs | vs {args.precisions[0]} |")
    print("|---|---|---|---|")
    for prec, values in results.items():
        med = statistics.median(values)
        print(f"| {prec} | {med:.2f} | {' '.join(f'{v:.2f}' for v in values)} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
