"""Training-step time of the CIFAR MobileNetV2 at several widths: how wide a dense network these
cores can train (RESULTS.md, "MobileNetV2 on CIFAR-10").

    python benchmarks/bench_mobilenet_width.py --widths 1.0 0.5 --threads 1

One SGD step of a batch of 128 random 32x32 images, float32 and bfloat16 autocast; the best of
three steps after a warm-up step, and the epoch (391 steps) it implies.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from unipts.models.cifar_mobilenet import cifar_mobilenet_v2


def step_seconds(width: float, bf16: bool, batch: int = 128, steps: int = 4) -> float:
    model = cifar_mobilenet_v2(10, 3, width_mult=width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return min(times[1:])  # the first step pays for allocations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for width in args.widths:
        params = sum(p.numel() for p in cifar_mobilenet_v2(10, 3, width_mult=width).parameters())
        for bf16 in (False, True):
            seconds = step_seconds(width, bf16)
            print(f"width {width}: {params / 1e6:.2f}M parameters, {'bfloat16' if bf16 else 'float32'}: "
                  f"{seconds:.3f} s a step, {seconds * 391 / 60:.1f} min an epoch ({args.threads} threads)", flush=True)


if __name__ == "__main__":
    main()
