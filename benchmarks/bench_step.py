"""Fine-tune step time of the masked student vs the same network dense.

One optimisation step (forward, backward, SGD update) of CIFAR-10 ResNet-20 at batch 64 on
random 32x32 images: the dense network with cross-entropy, then the masked student at 90%
sparsity with the straight-through masked forward and SR-STE backward, and again including the
dynamic-sparsity re-mask before each step (interval 1), and the masked student with its
convolution weights in channels-last memory format (``channels_last=true``, the default of the
entry points). Only the student is timed: the frozen
teacher's forward is the same cost in both settings. Median over repeats, after warm-up.

    python benchmarks/bench_step.py [--batch 64] [--steps 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from unipts.models.cifar_resnet import CifarResNet
from unipts.sparse import allocate, remask_from_magnitude_, set_masks_, sparsify


def step_times(model, x, y, steps: int, remask: bool) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    times = []
    for i in range(steps + 5):
        t = time.perf_counter()
        if remask:
            remask_from_magnitude_(model)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 5:  # warm-up steps are not timed
            times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--target", type=float, default=0.9)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    dense = CifarResNet(20).train()
    sparse = sparsify(copy.deepcopy(dense))
    set_masks_(sparse, allocate(sparse, "uniform", args.target))
    sparse_cl = copy.deepcopy(sparse).to(memory_format=torch.channels_last)
    rows = []
    # Interleave the settings so that a change in machine load hits all of them alike.
    results = {"dense": [], "masked": [], "masked + re-mask": [], "masked, channels-last": []}
    for _ in range(3):
        results["dense"] += step_times(dense, x, y, args.steps, remask=False)
        results["masked"] += step_times(sparse, x, y, args.steps, remask=False)
        results["masked + re-mask"] += step_times(sparse, x, y, args.steps, remask=True)
        results["masked, channels-last"] += step_times(sparse_cl, x, y, args.steps, remask=False)
    base = statistics.median(results["dense"])
    print(f"ResNet-20, batch {args.batch}, {args.threads} threads, sparsity {args.target}, "
          f"median of {3 * args.steps} steps\n")
    print("| setting | step (ms) | vs dense |\n|---|---|---|")
    for name, times in results.items():
        med = statistics.median(times)
        rows.append((name, med))
        print(f"| {name} | {1000 * med:.1f} | {med / base:.3f}x |")


if __name__ == "__main__":
    main()
