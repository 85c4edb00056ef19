"""One-shot pruning without training: SparseGPT, Wanda and magnitude side by side on a dense CIFAR-10
checkpoint, test top-1 with and without BatchNorm re-estimation, and each pruner's wall time.

    OMP_NUM_THREADS=1 python benchmarks/probe_oneshot.py \
        --data ../shared/data/cifar10-jpeg.tar.gz --checkpoint assets/cifar10_resnet20.pt \
        --targets 0.5 0.7 --allocation erk --calib-size 1024 --calib-seed 0

Every method prunes a fresh sparsified copy of the dense network to the same per-layer zero
counts (``--allocation``; under ``--pattern 2:4`` the pattern's), from the same calibration images:
``--calib-size`` distinct training images drawn with ``--calib-seed`` (the draw ``unipts-prune``
makes), in batches of ``--batch-size``. "top1" is on the 10,000 test images with the dense
network's BatchNorm statistics; "top1_bn" after re-estimating them on the calibration images
(:func:`unipts.sparse.reestimate_bn_`). "seconds" is the pruner's wall time, "cpu_seconds" its
process CPU time (the fairer figure on a shared machine; with ``--threads 1`` both are equal
when nothing else competes for the core). ``--json PATH`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from unipts.baselines import sparsegpt_prune_, wanda_prune_  # noqa: E402
from unipts.data import calibration_indices, cifar10  # noqa: E402
from unipts.models import build_model, read_state_dict  # noqa: E402
from unipts.sparse import (  # noqa: E402
    allocate, fold_masks_, global_sparsity, layer_sparsities, reestimate_bn_, set_masks_, sparsify,
)


def magnitude_prune_(student, target, batches, *, allocation, **unused):
    set_masks_(student, allocate(student, allocation, target))
    fold_masks_(student)


PRUNERS = {
    "sparsegpt": lambda args: (lambda s, t, b, **kw: sparsegpt_prune_(
        s, t, b, dampening=args.dampening, block_size=args.block_size, inputs=args.inputs, **kw)),
    "wanda": lambda args: (lambda s, t, b, **kw: wanda_prune_(s, t, b, inputs=args.inputs, **kw)),
    "magnitude": lambda args: magnitude_prune_,
}


def top1(model: torch.nn.Module, data, batch_size: int = 500) -> float:
    model.eval()
    right = 0
    with torch.inference_mode():
        for x, y in DataLoader(data, batch_size=batch_size):
            right += int((model(x).argmax(1) == y).sum())
    return right / len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the CIFAR-10 archive or folder")
    p.add_argument("--data-dir", default=str(REPO / "data"), help="where the archive is unpacked (default: data/)")
    p.add_argument("--checkpoint", required=True, help="the dense network's state_dict")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--methods", nargs="+", default=list(PRUNERS), choices=list(PRUNERS))
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--allocation", default="erk", help="allocation rule (unipts.sparse.RULES)")
    p.add_argument("--pattern", default=None, help="an N:M pattern such as 2:4 (then the target must be 1 - N/M)")
    p.add_argument("--calib-size", type=int, default=1024)
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128, help="calibration batch size")
    p.add_argument("--dampening", type=float, default=0.01, help="SparseGPT's dampening")
    p.add_argument("--block-size", type=int, default=128, help="SparseGPT's block size")
    p.add_argument("--inputs", default="sparse", choices=["sparse", "dense"],
                   help="SparseGPT's and Wanda's layer inputs: from the network pruned so far, or the dense one")
    p.add_argument("--no-eval", action="store_true", help="only prune and time (no test accuracy)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    splits = cifar10(args.data, args.data_dir, augment=False)
    dense = build_model({"name": args.model}, splits.num_classes, splits.in_channels)
    dense.load_state_dict(read_state_dict(args.checkpoint))
    dense.eval()
    indices = calibration_indices(splits.train_labels, args.calib_size, args.calib_seed)
    batches = [x for x, _ in DataLoader(Subset(splits.train_plain, indices), batch_size=args.batch_size)]
    rows = []
    if not args.no_eval:
        rows.append({"method": "dense", "target": 0.0, "top1": top1(dense, splits.eval)})
        print(f"dense: top1 {rows[-1]['top1']:.4f}", flush=True)
    for target in args.targets:
        for method in args.methods:
            student = sparsify(copy.deepcopy(dense), srste_decay=0.0, pattern=args.pattern)
            started, cpu_started = time.perf_counter(), time.process_time()
            PRUNERS[method](args)(student, target, batches, allocation=args.allocation, dense=dense)
            row = {"method": method, "target": target, "seconds": time.perf_counter() - started,
                   "cpu_seconds": time.process_time() - cpu_started,
                   "sparsity": global_sparsity(layer_sparsities(student))}
            if not args.no_eval:
                row["top1"] = top1(student, splits.eval)
                reestimate_bn_(student, batches)
                row["top1_bn"] = top1(student, splits.eval)
            rows.append(row)
            print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
