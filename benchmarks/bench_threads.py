"""Time per unit of CPU work at several torch thread counts: the measurement behind
``runtime.threads``'s default.

Two workloads of a CIFAR-10 run, on random 32x32 images: a fine-tune step of ResNet-20 (batch
64: forward, backward, SGD update) and a search evaluation (ResNet-20 forward over 256 images in
eval mode). Each thread count runs in its own process (torch fixes the inter-op pool at the
first parallel call), rounds interleave the thread counts so that a change in the machine's load
hits them alike, and the median per setting is reported with the load average.

    python benchmarks/bench_threads.py [--threads 1 2 auto] [--rounds 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time
import torch
import torch.nn.functional as F
from unipts.console import set_threads
from unipts.models.cifar_resnet import CifarResNet

threads = set_threads(sys.argv[1] if sys.argv[1] == "auto" else int(sys.argv[1]))
steps = int(sys.argv[2])
torch.manual_seed(0)
model = CifarResNet(20, num_classes=10, in_channels=3)
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
batch = torch.randn(256, 3, 32, 32)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

def timed(fn):
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times

def train_step():
    model.train()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

@torch.no_grad()
def evaluation():
    model.eval()
    model(batch)

print(json.dumps({"threads": threads or torch.get_num_threads(), "train": timed(train_step), "eval": timed(evaluation)}))
"""


def run_setting(setting: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the knob decides, not the env
    out = subprocess.run([sys.executable, "-c", WORKER, setting, str(steps)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", default=["1", "2", "auto"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    samples: dict[str, dict] = {s: {"train": [], "eval": [], "threads": None} for s in args.threads}
    for _ in range(args.rounds):
        for setting in args.threads:
            result = run_setting(setting, args.steps)
            samples[setting]["threads"] = result["threads"]
            samples[setting]["train"] += result["train"]
            samples[setting]["eval"] += result["eval"]
    print(f"load average (1 min): {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
          f"{os.cpu_count()} logical CPUs; {time.perf_counter() - started:.0f} s")
    print("| runtime.threads | torch threads | train step, batch 64 (ms) | search evaluation, 256 images (ms) |")
    print("|---|---|---|---|")
    for setting, s in samples.items():
        print(f"| {setting} | {s['threads']} | {1000 * statistics.median(s['train']):.1f} | "
              f"{1000 * statistics.median(s['eval']):.1f} |")


if __name__ == "__main__":
    main()
