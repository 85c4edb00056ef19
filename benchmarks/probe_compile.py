"""Would ``torch.compile`` speed up the fine-tune on this CPU? One distillation step as the
fine-tune takes it (the frozen teacher's forward without gradients, then the masked student's
forward, KL loss, backward and SGD update; the teacher is a frozen copy of the masked student, the
dense teacher's cost but for one multiply per layer), eager against both networks compiled in place
(``nn.Module.compile``), channels-last, 90% uniform masks, random 32x32 images. Median step time
after warm-up; the warm-up's seconds (mostly compiling) are shown apart. Each setting runs in a
fresh process, so the second does not reuse what the first compiled in memory.
``--student-only`` leaves the teacher out; ``--profile`` prints where the eager step's time goes.

    python benchmarks/probe_compile.py [--network mobilenet_v2|resnet20] [--batch 64] [--threads 1]
    python benchmarks/probe_compile.py --student-only --batch 128 --profile
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def network(name: str) -> torch.nn.Module:
    from unipts.models.cifar_mobilenet import cifar_mobilenet_v2
    from unipts.models.cifar_resnet import CifarResNet

    return cifar_mobilenet_v2(width_mult=0.5) if name == "mobilenet_v2" else CifarResNet(20)


def time_steps(name: str, batch: int, steps: int, compiled: bool, student_only: bool) -> dict:
    from unipts.sparse import allocate, set_masks_, sparsify

    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    student = sparsify(network(name)).train()
    set_masks_(student, allocate(student, "uniform", 0.9))
    student = student.to(memory_format=torch.channels_last)
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    if compiled:
        student.compile()
        teacher.compile()

    fixed = torch.full((batch, 10), -2.3026)  # log(1/10): a uniform target, in place of the teacher's

    def step() -> None:
        if student_only:
            target = fixed
        else:
            with torch.no_grad():
                target = F.log_softmax(teacher(x), 1)
        loss = F.kl_div(F.log_softmax(student(x), 1), target, log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    for _ in range(2):
        step()
    warmup = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"warmup_s": warmup, "step_s": statistics.median(times), "step": step}


def profile(step) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10), file=sys.stderr)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", choices=["mobilenet_v2", "resnet20"], default="mobilenet_v2")
    p.add_argument("--batch", type=int, default=64, help="the CIFAR-10 recipe's fine-tune batch")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--student-only", action="store_true")
    p.add_argument("--profile", action="store_true", help="also profile the eager step (printed to stderr)")
    p.add_argument("--one", choices=["eager", "compiled"], help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        result = time_steps(args.network, args.batch, args.steps, args.one == "compiled", args.student_only)
        if args.profile and args.one == "eager":
            profile(result["step"])
        print(json.dumps({k: v for k, v in result.items() if k != "step"}))
        return
    rows = {}
    for mode in ("eager", "compiled"):
        done = subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:]), "--one", mode],
                              stdout=subprocess.PIPE, text=True, check=True)  # a profile goes to stderr
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    what = "student only" if args.student_only else "teacher + student"
    print(f"| {args.network}, {what}, batch {args.batch}, {args.threads} thread(s) | step (median of {args.steps}) | "
          "warm-up (2 steps) | vs eager |")
    print("|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['step_s']:.3f} s | {r['warmup_s']:.1f} s | "
              f"{rows['eager']['step_s'] / r['step_s']:.2f}x |")


if __name__ == "__main__":
    main()
