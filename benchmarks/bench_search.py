"""Speed of the reducing-regrowing search against its floor.

CIFAR-10 ResNet-20 (random weights: the speed does not depend on them) at 90% sparsity with
1,024 calibration images (512 re-estimate BN, the next 512 are scored) and the released sizes:
25 generations x 25 candidates = 625 evaluations. The floor of one evaluation is what no search
can avoid: one train-mode forward pass over the BN images and one eval-mode pass over the
fitness images, measured in the same run, on the same masked network, batch size and threads.

    python benchmarks/bench_search.py                                  # full size, random images
    python benchmarks/bench_search.py --data /work/shared/data/cifar10-jpeg.tar.gz --ddp 2
    python benchmarks/bench_search.py --generations 2 --population 6   # a quick check

``--ddp N`` also runs the same search in N gloo processes (each scores a share of every
generation) and reports the speedup over the single process.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import socket
import statistics
import sys
import tempfile
import time

import torch

from unipts.models.cifar_resnet import CifarResNet
from unipts.search import Fitness, search_allocation, split_calibration, stack_images
from unipts.sparse import reestimate_bn_, set_masks_, sparsify
from unipts.sparse.allocation import layer_numels, regrow_decode


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="CIFAR-10 archive/folder; random tensors when omitted")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "unipts-data"),
                   help="where a CIFAR-10 archive is unpacked")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--calib", type=int, default=1024)
    p.add_argument("--bn-images", type=int, default=None, help="default: half of --calib")
    p.add_argument("--fitness-images", type=int, default=None, help="default: the rest of --calib")
    p.add_argument("--population", type=int, default=25)
    p.add_argument("--generations", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--noise-std", type=float, default=0.1)
    p.add_argument("--released", action="store_true", help="released_quirks=True")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    p.add_argument("--ddp", type=int, default=0, help="also run the search in this many gloo processes")
    p.add_argument("--ddp-threads", type=int, default=None, help="threads per DDP process (default: --threads)")
    p.add_argument("--floor-repeats", type=int, default=5, help="floor measurements before and after the search")
    p.add_argument("--profile", action="store_true", help="cProfile the single-process search")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def calibration(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    if args.data:
        from unipts.data import calibration_indices, cifar10

        splits = cifar10(args.data, args.data_dir, augment=False)
        idx = calibration_indices(splits.train_labels, args.calib, args.seed, False)
        x, y = stack_images(torch.utils.data.Subset(splits.train_plain, idx))
        return x, y, f"CIFAR-10 train images ({args.data})"
    g = torch.Generator().manual_seed(args.seed)
    return torch.randn(args.calib, 3, 32, 32, generator=g), torch.randint(0, 10, (args.calib,), generator=g), \
        "random tensors"


def network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return sparsify(CifarResNet(20))


def options(args) -> dict:
    return dict(population=args.population, generations=args.generations, bn_images=args.bn_images,
                fitness_images=args.fitness_images, batch_size=args.batch_size, noise_std=args.noise_std,
                released_quirks=args.released, seed=args.seed)


@torch.no_grad()
def floor_seconds(net, bn_x, fit_x, batch_size: int) -> float:
    """One BN pass (train mode, BN reset) plus one eval pass, on the network as it is."""
    t = time.perf_counter()
    reestimate_bn_(net, torch.split(bn_x, batch_size))
    net.eval()
    for xb in torch.split(fit_x, batch_size):
        net(xb).argmax(1)
    net.train()
    return time.perf_counter() - t


def measure_floor(net, bn_x, fit_x, args, repeats: int) -> list[float]:
    return [floor_seconds(net, bn_x, fit_x, args.batch_size) for _ in range(repeats)]


def _ddp_worker(rank: int, world: int, port: int, args, x, y, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(args.ddp_threads or args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = network(args.seed)
        dist.barrier()
        t = time.perf_counter()
        result = search_allocation(net, args.target, x, y, **options(args))
        dist.barrier()
        seconds = time.perf_counter() - t
        if rank == 0:
            torch.save({"seconds": seconds, "table": result.table, "evaluations": result.evaluations}, out)
    finally:
        dist.destroy_process_group()


def run_ddp(args, x, y) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.pt")
        t = time.perf_counter()
        mp.spawn(_ddp_worker, args=(args.ddp, port, args, x, y, out), nprocs=args.ddp, join=True)
        total = time.perf_counter() - t
        result = torch.load(out)
    result["total_with_startup"] = total
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y, source = calibration(args)
    bn_x, fit_x, _ = split_calibration(x, y, args.bn_images, args.fitness_images)
    net = network(args.seed)
    numels = layer_numels(net)
    set_masks_(net, regrow_decode(numels, args.target, 0.05))
    print(f"# search benchmark: CIFAR-10 ResNet-20 (random weights, {sum(numels.values()):,} prunable weights, "
          f"{len(numels)} layers) at {args.target:g}")
    print(f"# images: {source}; {len(bn_x)} BN + {len(fit_x)} fitness images, batch {args.batch_size}; "
          f"{args.population} x {args.generations}{' released quirks' if args.released else ''}")
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s) per process; load average {os.getloadavg()[0]:.2f} at start")

    measure_floor(net, bn_x, fit_x, args, 2)  # warm-up
    floors = measure_floor(net, bn_x, fit_x, args, args.floor_repeats)

    search_net = network(args.seed)
    profiler = cProfile.Profile() if args.profile else None
    t = time.perf_counter()
    if profiler:
        profiler.enable()
    result = search_allocation(search_net, args.target, x, y, **options(args))
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - t
    floors += measure_floor(net, bn_x, fit_x, args, args.floor_repeats)

    floor = statistics.median(floors)
    per_eval = wall / result.evaluations
    rows = [
        ("evaluations", f"{result.evaluations}"),
        ("search wall time", f"{wall:.1f} s"),
        ("time per evaluation", f"{per_eval * 1e3:.1f} ms"),
        ("floor per evaluation (BN pass + fitness pass, median of "
         f"{len(floors)}; min {min(floors) * 1e3:.1f}, max {max(floors) * 1e3:.1f})", f"{floor * 1e3:.1f} ms"),
        ("ratio to the floor", f"{per_eval / floor:.3f}x"),
        ("winner fitness / achieved sparsity", f"{result.fitness:.4f} / {result.achieved:.6f}"),
    ]
    print("# single process: " + "; ".join(f"{k}: {v}" for k, v in rows), flush=True)
    if args.ddp and args.ddp > 1:
        ddp = run_ddp(args, x, y)
        same = ddp["table"] == result.table
        rows += [
            (f"{args.ddp}-process DDP search wall time ({args.ddp_threads or args.threads} thread(s) each)",
             f"{ddp['seconds']:.1f} s ({ddp['total_with_startup']:.1f} s with process start-up)"),
            (f"{args.ddp}-process speedup", f"{wall / ddp['seconds']:.2f}x"),
            ("DDP table identical to the single-process table", "yes" if same else "no"),
        ]
    print()
    print("| quantity | value |")
    print("| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print(f"\n# load average {os.getloadavg()[0]:.2f} at the end")
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(15)
        print(buf.getvalue())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
