"""Does re-estimating BatchNorm statistics after the fine-tune help? A post-hoc probe on a finished
``eval_split=val`` CIFAR-10 run: its student's validation top-1 as trained, after re-estimation on
its clean calibration images, and after re-estimation on four augmented passes over them.

    python benchmarks/probe_bn_reestimate.py outputs/bench/cifar10_resnet20/tune-erk-dkl100-cutmix/s0.9/seed0 \
        --data ../shared/data/cifar10-jpeg.tar.gz

The run directory must hold ``checkpoints/final.ckpt`` and ``calib_indices.json`` (both written by
``unipts-prune``) and have used the default validation split (5,000 images, seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from unipts.data import cifar10, hold_out_validation  # noqa: E402
from unipts.models import build_model, read_state_dict  # noqa: E402
from unipts.sparse import reestimate_bn_  # noqa: E402


def top1(model: torch.nn.Module, data) -> float:
    model.eval()
    right = 0
    with torch.inference_mode():
        for x, y in DataLoader(data, batch_size=1000):
            right += int((model(x).argmax(1) == y).sum())
    return right / len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", required=True, help="the CIFAR-10 archive or folder")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = hold_out_validation(cifar10(args.data, REPO / "data"), 5000, 0)
    indices = json.loads((args.run_dir / "calib_indices.json").read_text())
    state = read_state_dict(args.run_dir / "checkpoints" / "final.ckpt", "checkpoint")
    model = build_model({"name": "resnet20", "exclude": []}, 10, 3)
    # the final checkpoint holds folded weights (zeros where pruned) beside the masks
    model.load_state_dict({k.removeprefix("student."): v for k, v in state.items()
                           if not k.endswith((".mask", ".target_sparsity"))})
    print(f"as trained:                            {top1(model, splits.eval):.4f}")
    plain = Subset(splits.train_plain, indices)
    reestimate_bn_(model, (x for x, _ in DataLoader(plain, batch_size=64)))
    print(f"BN re-estimated, clean calibration:    {top1(model, splits.eval):.4f}")
    augmented = Subset(splits.train, indices)
    reestimate_bn_(model, (x for _ in range(4) for x, _ in DataLoader(augmented, batch_size=64, shuffle=True)))
    print(f"BN re-estimated, augmented x4:         {top1(model, splits.eval):.4f}")


if __name__ == "__main__":
    main()
