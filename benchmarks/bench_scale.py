"""The paper's ImageNet protocol, timed: ResNet-50 at 224 px, costs per image, projected to full size.

The protocol (UniPTS, CVPR 2024) on ImageNet: 10,240 calibration images; the search, 25
generations x 25 candidates = 625 evaluations, each a train-mode BatchNorm re-estimation pass and
an eval-mode scoring pass (in the released code both over all 10,240 images: 12.8 M forward
images); then 100 fine-tune epochs over the 10,240 images at batch 64 (16,000 steps, 1.02 M
training images, each a frozen teacher's forward and the masked student's forward and backward).

This script runs every phase of it on torchvision's ResNet-50 (random weights: the time does not
depend on them; 1,000 classes; 90% sparsity, ERK masks) on a 224 px ImageFolder made once from
the CIFAR-10 archive (32 px JPEGs upscaled, under ``--out``), cut down to a few images per
measurement, and measures:

(a) the search: seconds per forward image of the BN pass (train mode, input noise) and of the
    scoring pass (eval mode, label-free KL against the dense network), through
    :class:`unipts.search.Fitness` on calibration images kept at one byte per value, in fp32 and
    bf16 autocast, contiguous and channels-last; plus each evaluation's mask rewrite;
(b) the fine-tune: seconds per training image of one step (teacher forward, student forward and
    backward under the base-decayed KL, SGD with momentum), fp32 and bf16 autocast, channels-last
    (the entry points' default), and the re-mask from magnitudes before each step (dynamic.interval=1);
(c) decoding: seconds per image of :func:`unipts.search.keep_images` (the search's images, decoded
    once) and of the fine-tune's augmenting loader, with 0 workers and with the machine's cores;
(d) memory: peak RSS of the search at each of ``--rss-sizes`` calibration images (1,024 and
    2,048), each in a fresh process: the images kept, then one evaluation on them, next to what the
    same images would take as float32 (4 x 3 x 224 x 224 bytes each).

and projects the whole protocol's time from them (formulas in the output), for the released sizes
and for unipts' cheaper ImageNet search (2,048 images kept, 1,024 BN + 1,024 fitness images,
15 generations x 25 candidates, KL fitness). With ``--device cuda`` (the default where CUDA is
available) the same measurements run on the GPU with larger batches.

    python benchmarks/bench_scale.py --threads 2 --note "idle"               # CPU: a few minutes
    python benchmarks/bench_scale.py --device cuda --note "one H100"         # GPU: larger sizes
    python benchmarks/bench_scale.py --threads 1 --no-write --rss-sizes      # a check, no RSS, nothing written

Results: a printed Markdown section, ``benchmarks/results/bench_scale.json`` (one entry per device
kind: a GPU run adds its entry beside the CPU one) and the section of BENCHMARKS.md between the
``bench-scale`` markers, rendered from every entry of the JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- bench-scale:start -->", "<!-- bench-scale:end -->"
HEADING = "## ImageNet-scale protocol, timed (bench_scale.py)"
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
VAL_PER_CLASS = 1  # imagefolder() wants a val/ split with the same classes; nothing here reads it
NUM_CLASSES = 1000  # ImageNet's head, whatever the folder holds (the labels are never used for scoring)
PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("contiguous", "channels_last")
TRAIN_LAYOUT = "channels_last"  # runtime.channels_last=true, the entry points' default


@dataclass(frozen=True)
class Protocol:
    """One full-size run, counted in the units the measurements are per."""

    name: str
    calib: int  # calibration images
    kept_images: int  # decoded once and kept for the search
    evaluations: int
    bn_images: int  # forward images of each evaluation's BN pass
    fitness_images: int  # forward images of each evaluation's scoring pass
    dense_images: int  # label-free fitness: the dense network's outputs on the fitness images, once
    train_images: int  # fine-tune: epochs x calibration images
    train_steps: int  # at batch 64
    description: str


def preset_protocol(name: str, overrides: list[str], description: str) -> Protocol:
    """The sizes of the prune run ``experiment=imagenet_resnet50`` plus ``overrides`` composes
    (so the projection is of what that command runs): its calibration set split as the search
    splits it, its evaluations at most (``patience`` may stop it earlier), its fine-tune."""
    from hydra import compose, initialize_config_dir

    from unipts import CONFIG_DIR
    from unipts.search import split_sizes

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("prune", overrides=["experiment=imagenet_resnet50", *overrides])
    a, calib = cfg.allocation, cfg.calib.size
    kept = min(calib, a.max_images or calib)
    bn, fit = split_sizes(calib, a.bn_images, a.fitness_images, a.fitness_on_bn_images, a.max_images)
    return Protocol(name, calib, kept, a.generations * a.population, bn, fit,
                    0 if a.fitness == "top1" else fit, cfg.finetune.epochs * calib,
                    cfg.finetune.epochs * math.ceil(calib / cfg.data.batch_size), description)


PROTOCOLS = (
    preset_protocol("released", ["allocation.max_images=null", "allocation.fitness_on_bn_images=true",
                                 "allocation.bn_images=null", "allocation.fitness_images=null",
                                 "allocation.fitness=top1", "allocation.generations=25", "allocation.patience=null"],
                    "the released code's sizes: 25 generations x 25 candidates, BN pass and top-1 scoring pass each "
                    "over all 10,240 calibration images (the BN set drawn with replacement, scored on the same "
                    "images)"),
    preset_protocol("unipts", [],
                    "unipts' cheaper search at ImageNet scale (`experiment=imagenet_resnet50`): "
                    "allocation.max_images=2048, bn_images=1024, fitness_images=1024, fitness=kl (one dense pass "
                    "over the fitness images), generations=15 x 25 candidates (patience=5 may stop it earlier: an "
                    "upper bound); the same fine-tune"),
)

# Per-device defaults of the cut-down sizes: a few minutes on a 2-core CPU, seconds of GPU time.
DEVICE_DEFAULTS = {
    "cpu": dict(search_images=16, search_batch=16, repeats=2, train_batch=16, steps=2, warmup_steps=1,
                decode_images=256, rss_eval_images=-1),
    "cuda": dict(search_images=1024, search_batch=256, repeats=5, train_batch=64, steps=20, warmup_steps=3,
                 decode_images=2048, rss_eval_images=0),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda where available")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--note", default="", help="how the machine was, for the record: e.g. 'idle' or 'loaded: 3 jobs'")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("UNIPTS_CIFAR10", DEFAULT_ARCHIVE)),
                   help="the CIFAR-10 JPEG archive, or its unpacked folder (train/ test/)")
    p.add_argument("--folder", type=Path, default=None,
                   help="use this train/ val/ ImageFolder as it is instead of making one from --data")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_scale", help="the made folder goes here")
    p.add_argument("--model", choices=["resnet50", "resnet18"], default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS), help="of the search's network")
    sizes = p.add_argument_group("cut-down sizes (defaults depend on the device: see DEVICE_DEFAULTS)")
    sizes.add_argument("--search-images", type=int, help="BN images and as many fitness images per evaluation")
    sizes.add_argument("--search-batch", type=int, help="batch of the search's forward passes")
    sizes.add_argument("--repeats", type=int, help="timed evaluations per search setting (after one warm-up)")
    sizes.add_argument("--train-batch", type=int, help="fine-tune batch (the protocol's is 64)")
    sizes.add_argument("--steps", type=int, help="timed fine-tune steps per precision")
    sizes.add_argument("--warmup-steps", type=int)
    sizes.add_argument("--decode-images", type=int, help="images decoded per loader measurement")
    sizes.add_argument("--workers", type=int, default=_usable_cpus(), help="loader processes (besides 0)")
    sizes.add_argument("--rss-sizes", nargs="*", type=int, default=[1024, 2048],
                       help="calibration images of each peak-RSS process (none: skip)")
    sizes.add_argument("--rss-eval-images", type=int,
                       help="BN (and fitness) images of the evaluation in each RSS process: 0 all (half the kept "
                            "set each), -1 one search batch (default on the CPU, to keep it short)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "bench_scale.json")
    p.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print only: leave the JSON file and BENCHMARKS.md alone")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: recompute the projections of the runs in --json and rewrite the section")
    p.add_argument("--rss-worker", type=int, metavar="N", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- the 224 px image folder --------------------------------------------------------------------
def _cifar_files(source: Path):
    """``(split, class, jpeg bytes)`` of every image of the CIFAR-10 archive or its unpacked tree."""
    if source.is_file():
        with tarfile.open(source) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test"):
                    yield parts[-3], parts[-2], tar.extractfile(member).read()
    else:
        for split in ("train", "test"):
            for path in sorted((source / split).glob("*/*")):
                if path.is_file():
                    yield split, path.parent.name, path.read_bytes()


def make_folder(source: Path, root: Path, per_class: int, size: int) -> Path:
    """``root/train/<class>/*.jpg`` (``per_class`` each) and ``root/val/<class>/*.jpg`` upscaled to
    ``size`` px, written once: a folder made earlier with as many images or more is reused."""
    from PIL import Image

    stamp = root / "complete.json"
    if stamp.is_file():
        made = json.loads(stamp.read_text())
        if made.get("size") == size and made.get("per_class", 0) >= per_class:
            return root
    if not source.exists():
        raise SystemExit(f"error: --data: no such file or folder: {source} (the CIFAR-10 JPEG archive; "
                         "or give a ready ImageFolder with --folder)")
    tmp = root.parent / f".{root.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    quota = {"train": per_class, "test": VAL_PER_CLASS}
    written: dict[tuple[str, str], int] = {}
    started = time.perf_counter()
    for split, cls, data in _cifar_files(source):
        n = written.get((split, cls), 0)
        if n >= quota[split]:
            continue
        target = tmp / ("train" if split == "train" else "val") / cls / f"{n:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(data)) as img:
            img.convert("RGB").resize((size, size), Image.BICUBIC).save(target, quality=90)
        written[(split, cls)] = n + 1
    classes = {cls for split, cls in written if split == "train"}
    if not classes or any(written.get(("test", cls), 0) < VAL_PER_CLASS or written[("train", cls)] < per_class
                          for cls in classes):
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"error: --data: {source} holds fewer than {per_class} training images per class "
                         "(or no test/ split)")
    (tmp / "complete.json").write_text(json.dumps({"source": str(source), "per_class": per_class, "size": size}))
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    print(f"# made {root}: {len(classes)} classes x {per_class} images at {size} px in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return root


# -- helpers ------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    """Wall seconds of ``fn()``, the device's queued work included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def autocast_of(precision: str, device):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _dtype(precision: str):
    import torch

    return None if precision == "fp32" else torch.bfloat16


def sparse_network(args, device, layout: str = TRAIN_LAYOUT):
    """The dense network (seed 0) and its sparsified copy with ERK magnitude masks at the target."""
    import torch

    from unipts.models import build_model
    from unipts.sparse import allocate, set_masks_, sparsify

    torch.manual_seed(0)
    dense = build_model({"name": args.model}, NUM_CLASSES, 3).to(device)
    student = sparsify(copy.deepcopy(dense))
    set_masks_(student, allocate(student, "erk", args.target))
    if layout == "channels_last":
        dense, student = dense.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    return dense, student


def splits_of(folder: Path, args):
    from unipts.data.datasets import imagefolder

    # torchvision's ImageNet evaluation resize: 256 for 224 (8/7 of the crop)
    return imagefolder(str(folder), image_size=args.image_size, resize=round(args.image_size * 8 / 7))


# -- (c) decoding -------------------------------------------------------------------------------
def decode_costs(splits, args) -> tuple[dict, object]:
    """Seconds per image: ``keep_images`` (plain transform, quantised and kept; the whole call,
    loader start-up included) and the fine-tune's augmenting loader (steady state: from its first
    batch on), at each worker count. Also returns the images kept by the first call."""
    from torch.utils.data import DataLoader

    from unipts.search import keep_images

    n = args.decode_images
    out, kept = {}, None
    for workers in sorted({0, args.workers}):
        start = time.perf_counter()
        images, _ = keep_images(splits.train_plain, n, args.search_batch, workers)
        out[f"keep/{workers}"] = (time.perf_counter() - start) / n
        if kept is None:
            kept = images
        loader = DataLoader(splits.train, batch_size=args.train_batch, shuffle=True, num_workers=workers)
        seen, start = 0, None
        for x, _ in loader:
            if start is None:  # the first batch pays for the workers' start-up: not a per-image cost
                start = time.perf_counter()
            else:
                seen += len(x)
        out[f"load/{workers}"] = (time.perf_counter() - start) / max(seen, 1)
        print(f"# decode, {workers} workers: keep {1e3 * out[f'keep/{workers}']:.2f} ms/image, "
              f"augmenting loader {1e3 * out[f'load/{workers}']:.2f} ms/image", flush=True)
    return out, kept


# -- (a) the search -----------------------------------------------------------------------------
def search_costs(kept, args, device) -> dict:
    """Per setting (precision, layout): median seconds per forward image of the BN pass and of
    the scoring pass, and seconds per evaluation of the mask rewrite, over ``repeats`` evaluations
    after one warm-up, the settings interleaved so that a change of load hits all alike."""
    import torch

    from unipts.search import Fitness

    k = args.search_images
    bn_x, fit_x = kept[:k], kept[k:2 * k]
    fitnesses = {}
    for layout in args.layouts:
        _, net = sparse_network(args, device, layout)
        for precision in args.precisions:
            fitnesses[(precision, layout)] = Fitness(net, args.target, bn_x, fit_x, None, metric="kl",
                                                     batch_size=args.search_batch, autocast=_dtype(precision))
    gen = torch.Generator().manual_seed(0)
    times = {key: {"apply": [], "bn": [], "eval": []} for key in fitnesses}
    for round_ in range(args.repeats + 1):
        for key, fit in fitnesses.items():
            # Another Fitness on the same network moved its masks; a fresh candidate rewrites every layer.
            fit.forget_applied()
            genes = torch.rand(len(fit.names), generator=gen, dtype=torch.float64)
            t_apply = timed(lambda: fit.apply_(fit.decode(genes)), device)
            t_bn = timed(fit.reestimate_bn_, device)
            t_eval = timed(fit.measure, device)
            if round_:  # round 0 warms up every setting
                times[key]["apply"].append(t_apply)
                times[key]["bn"].append(t_bn / len(bn_x))
                times[key]["eval"].append(t_eval / len(fit_x))
    out = {}
    for (precision, layout), t in times.items():
        out[f"{precision}/{layout}"] = {name: statistics.median(v) for name, v in t.items()} | {"raw": t}
        print(f"# search {precision} {layout}: BN {1e3 * out[f'{precision}/{layout}']['bn']:.1f} ms/image, "
              f"scoring {1e3 * out[f'{precision}/{layout}']['eval']:.1f} ms/image, mask rewrite "
              f"{1e3 * out[f'{precision}/{layout}']['apply']:.1f} ms/evaluation", flush=True)
    return out


# -- (b) the fine-tune --------------------------------------------------------------------------
def finetune_costs(kept, args, device) -> dict:
    """Per precision: median seconds per training image of one step (teacher forward, student
    forward/backward, SGD step) and seconds per step of the re-mask from magnitudes."""
    import torch

    from unipts.lightning.module import OptimConfig, SparseFinetune
    from unipts.objectives import BaseDecayedKL
    from unipts.sparse import remask_from_magnitude_

    x = kept.decode(slice(0, args.train_batch)).to(device)
    o = OptimConfig()
    runs = {}
    for precision in args.precisions:
        teacher, student = sparse_network(args, device)
        # The LightningModule sets the teacher up as the fine-tune does: BatchNorm on batch
        # statistics with frozen running statistics (teacher_bn_train), no gradients.
        module = SparseFinetune(student, teacher, BaseDecayedKL(), NUM_CLASSES, o).train()
        opt = torch.optim.SGD([q for q in student.parameters() if q.requires_grad], lr=o.lr, momentum=o.momentum,
                              weight_decay=o.weight_decay)

        def step(module=module, opt=opt, precision=precision):
            with autocast_of(precision, device):
                with torch.no_grad():
                    teacher_logits = module.teacher(x)
                loss = module.objective(module.student(x), teacher_logits, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        runs[precision] = (module, step)
    times = {p: {"step": [], "remask": []} for p in runs}
    for i in range(args.warmup_steps + args.steps):
        for precision, (module, step) in runs.items():
            t_remask = timed(lambda: remask_from_magnitude_(module.student), device)
            t_step = timed(step, device)
            if i >= args.warmup_steps:
                times[precision]["step"].append(t_step / len(x))
                times[precision]["remask"].append(t_remask)
    out = {}
    for precision, t in times.items():
        out[precision] = {name: statistics.median(v) for name, v in t.items()} | {"raw": t}
        print(f"# fine-tune {precision}: {1e3 * out[precision]['step']:.1f} ms/image at batch {len(x)}, re-mask "
              f"{1e3 * out[precision]['remask']:.1f} ms/step", flush=True)
    return out


# -- (d) peak RSS of the search, one fresh process per size -------------------------------------
def _proc_status(key: str) -> int | None:
    """Bytes of a ``/proc/self/status`` field (VmRSS, VmHWM), None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int:
    import resource

    hwm = _proc_status("VmHWM")
    # ru_maxrss is in KiB on Linux (bytes on macOS, where /proc is absent anyway)
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_worker(args) -> None:
    """In a fresh process: keep ``args.rss_worker`` calibration images as the search does, then
    run one search evaluation on them; prints one JSON line."""
    import torch

    from unipts.search import Fitness, keep_images

    device = torch.device(args.device)
    n = args.rss_worker
    splits = splits_of(args.folder, args)
    _, net = sparse_network(args, device)
    before = _proc_status("VmRSS")
    kept, _ = keep_images(splits.train_plain, n, args.search_batch, 0)
    after_keep = _proc_status("VmRSS")
    e = n // 2 if args.rss_eval_images == 0 else args.search_batch if args.rss_eval_images < 0 else args.rss_eval_images
    e = min(e, n // 2)
    # Slices of the kept set are views: all n images stay resident, as they do through search_allocation.
    fit = Fitness(net, args.target, kept[:e], kept[e:2 * e], None, metric="kl", batch_size=args.search_batch,
                  autocast=_dtype(args.precisions[-1]))
    fit.evaluate(None)
    print(json.dumps({
        "images": n, "eval_images": e, "precision": args.precisions[-1], "rss_before": before,
        "rss_after_keep": after_keep, "peak_rss": _peak_rss(), "kept_bytes": kept.nbytes,
        "float32_bytes": 4 * kept.codes.numel(),
        "cuda_peak_allocated": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }))


def rss_costs(args, folder: Path) -> list[dict]:
    rows = []
    for n in args.rss_sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-worker", str(n), "--folder", str(folder),
               "--device", args.device, "--threads", str(args.threads), "--model", args.model,
               "--image-size", str(args.image_size), "--target", str(args.target), "--search-batch",
               str(args.search_batch), "--rss-eval-images", str(args.rss_eval_images), "--precisions",
               *args.precisions]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: the RSS process for {n} images failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"# RSS, {n} images: peak {r['peak_rss'] / 2**20:.0f} MiB (before the images "
              f"{r['rss_before'] / 2**20:.0f} MiB; kept {r['kept_bytes'] / 2**20:.0f} MiB, float32 would be "
              f"{r['float32_bytes'] / 2**20:.0f} MiB)", flush=True)
    return rows


# -- projection ---------------------------------------------------------------------------------
def project(run: dict, protocol: Protocol, precision: str) -> dict:
    """Seconds of each phase of ``protocol`` from the per-image costs of ``run``:

    decode   = kept_images x keep/w
    search   = evaluations x (mask rewrite + bn_images x BN + fitness_images x scoring) + dense_images x scoring
    steps    = train_steps x re-mask + train_images x step
    loader   = train_images x load/w
    total    = decode + search + steps + loader (CPU), decode + search + max(steps, loader) (GPU)

    where keep/w and load/w are the per-image decoding costs with w loader processes, w the measured
    worker count (the entry points decode in worker processes: data.num_workers); on the CPU those
    processes take the same cores as the network, so their time adds to its time, on a GPU they run
    on the host beside it. The search's costs are those of its channels-last network, the
    fine-tune's those at its measured batch (the per-image cost taken as the same at batch 64).
    """
    w = run["sizes"]["workers"]
    layout = "channels_last" if f"{precision}/channels_last" in run["search"] else "contiguous"
    s = run["search"][f"{precision}/{layout}"]
    f = run["finetune"][precision]
    d = run["decode"]
    gpu = run["device"] == "cuda"
    decode = protocol.kept_images * d[f"keep/{w}"]
    search = (protocol.evaluations * (s["apply"] + protocol.bn_images * s["bn"] + protocol.fitness_images * s["eval"])
              + protocol.dense_images * s["eval"])
    steps = protocol.train_steps * f["remask"] + protocol.train_images * f["step"]
    loader = protocol.train_images * d[f"load/{w}"]
    total = decode + search + (max(steps, loader) if gpu else steps + loader)
    return {"protocol": protocol.name, "precision": precision, "search_layout": layout, "decode_s": decode,
            "search_s": search, "steps_s": steps, "loader_s": loader, "total_s": total}


# -- rendering ----------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:.3f}" if h < 1 else f"{h:.2f}" if h < 10 else f"{h:,.1f}"


def _mib(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:,.1f}" if abs(n) < 100 * 2**20 else f"{n / 2**20:,.0f}"


def render_run(run: dict) -> list[str]:
    sz, m = run["sizes"], run["machine"]
    gpu = run["device"] == "cuda"
    k, reps = sz["search_images"], sz["repeats"]
    timed_search = 2 * k * reps
    timed_train = sz["train_batch"] * sz["steps"]
    released = PROTOCOLS[0]
    lines = [
        f"#### {'GPU' if gpu else 'CPU'}: {m['accelerator']}",
        "",
        f"`{run['command']}` on {run['date']}, {run['wall_s']:.0f} s in all. Machine: {m['cpu']}, "
        f"{m['cpus']} usable CPUs, {run['threads']} torch thread(s) (OMP_NUM_THREADS={m['omp_num_threads']}); "
        f"{m['note'] or 'no note given'}; load average (1 min) {m['load'][0]:.2f} at the start, "
        f"{m['load'][1]:.2f} at the end. Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}. "
        f"Network: {run['model_title']}.",
        "",
        f"Cut down: each search setting timed on {reps} evaluations of {k} BN + {k} fitness images "
        f"(batch {sz['search_batch']}), {timed_search:,} forward images against the released search's "
        f"{released.evaluations * (released.bn_images + released.fitness_images):,} "
        f"(1/{released.evaluations * (released.bn_images + released.fitness_images) / timed_search:,.0f}); the "
        f"fine-tune on {sz['steps']} steps at batch {sz['train_batch']} per precision ({timed_train} training images "
        f"against {released.train_images:,}: 1/{released.train_images / timed_train:,.0f}), after "
        f"{sz['warmup_steps']} warm-up step(s); decoding on {sz['decode_images']} images per measurement. "
        "Figures are medians.",
        "",
        "| phase | setting | measured |",
        "|---|---|---|",
    ]
    for key, s in run["search"].items():
        precision, layout = key.split("/")
        lines.append(f"| search: BN pass (train mode, input noise) | {precision}, {layout.replace('_', '-')} | "
                     f"{_ms(s['bn'])} ms/image |")
        lines.append(f"| search: scoring pass (eval mode, KL to the dense outputs) | {precision}, "
                     f"{layout.replace('_', '-')} | {_ms(s['eval'])} ms/image |")
        lines.append(f"| search: mask rewrite (decode the genes, write every mask) | {precision}, "
                     f"{layout.replace('_', '-')} | {_ms(s['apply'])} ms/evaluation |")
    for precision, f in run["finetune"].items():
        lines.append(f"| fine-tune step (teacher forward, student forward + backward, SGD) | {precision}, "
                     f"channels-last, batch {sz['train_batch']} | {_ms(f['step'])} ms/image |")
        lines.append(f"| fine-tune re-mask from magnitudes (dynamic.interval=1) | {precision} | "
                     f"{_ms(f['remask'])} ms/step |")
    for key, v in run["decode"].items():
        what, workers = key.split("/")
        label = ("decode + keep the search's images (`keep_images`, whole call)" if what == "keep"
                 else "fine-tune loader (RandomResizedCrop + flip, steady state)")
        lines.append(f"| {label} | {workers} worker(s) | {_ms(v)} ms/image |")
    lines += ["", f"Projected full protocol ({'GPU' if gpu else 'CPU'} hours; projections from the figures above, "
              "not measured end to end):", "",
              "| protocol | precision | decode | search | fine-tune steps | fine-tune loader | **total** |",
              "|---|---|---|---|---|---|---|"]
    for r in run["projections"]:
        lines.append(f"| {r['protocol']} | {r['precision']} | {_hours(r['decode_s'])} | {_hours(r['search_s'])} | "
                     f"{_hours(r['steps_s'])} | {_hours(r['loader_s'])} | **{_hours(r['total_s'])}** |")
    best = {p.name: min((r for r in run["projections"] if r["protocol"] == p.name), key=lambda r: r["total_s"])
            for p in PROTOCOLS}
    rel, uni = best["released"], best["unipts"]
    lines += ["", f"Fastest measured precision: released sizes {_hours(rel['total_s'])} h ({rel['precision']}), "
              f"unipts' sizes {_hours(uni['total_s'])} h ({uni['precision']}); the released search alone "
              f"{_hours(rel['search_s'])} h against unipts' {_hours(uni['search_s'])} h "
              f"({rel['search_s'] / uni['search_s']:.0f}x)."]
    if gpu:
        verdict = "meets" if uni["total_s"] <= 3600 else "misses"
        lines[-1] += f" Target (the full protocol in at most 1 hour on this GPU): unipts' sizes {verdict} it."
    if run["rss"]:
        lines += ["", f"Peak RSS of the search (each size in a fresh process: the images decoded with 0 workers "
                      f"and kept, then one evaluation over {_rss_eval(run['rss'])}, {run['rss'][0]['precision']}; "
                      "MiB):", "",
                  "| calibration images | RSS before the images | after keeping them | peak | kept (uint8 codes) | "
                  "as float32 |", "|---|---|---|---|---|---|"]
        for r in run["rss"]:
            lines.append(f"| {r['images']:,} | {_mib(r['rss_before'])} | {_mib(r['rss_after_keep'])} | "
                         f"{_mib(r['peak_rss'])} | {_mib(r['kept_bytes'])} | {_mib(r['float32_bytes'])} |")
        if len(run["rss"]) >= 2:
            a, b = run["rss"][0], run["rss"][-1]
            grew, f32 = b["peak_rss"] - a["peak_rss"], b["float32_bytes"] - a["float32_bytes"]
            kept_grew = b["rss_after_keep"] - a["rss_after_keep"]
            lines += ["", f"From {a['images']:,} to {b['images']:,} images the peak grew by {_mib(grew)} MiB; the "
                          f"extra {b['images'] - a['images']:,} images as float32 are {_mib(f32)} MiB: "
                          f"**{'less' if grew < f32 else 'not less'}** ({grew / f32:.2f}x). The RSS after keeping "
                          f"the images grew by {_mib(kept_grew)} MiB, the kept codes by "
                          f"{_mib(b['kept_bytes'] - a['kept_bytes'])} MiB; RSS also holds memory the allocator "
                          "kept after the decoding (each process starts afresh), so differences of this size are "
                          "only as exact as that."]
    return lines


def _rss_eval(rows: list[dict]) -> str:
    r = rows[0]
    return ("half the kept images for BN and half for scoring" if 2 * r["eval_images"] == r["images"]
            else f"{r['eval_images']} BN + {r['eval_images']} fitness images of them, one batch each, to keep it "
                 "short: the passes decode the kept images one batch at a time, so a full evaluation adds per image "
                 "only the dense network's log-probabilities for the KL fitness, 4 bytes per class")


def render(results: dict) -> str:
    lines = [MARK_START,
             "Generated by `benchmarks/bench_scale.py` (`make bench-scale`) from "
             "`benchmarks/results/bench_scale.json`; "
             "each device kind keeps its latest run. The network (by default torchvision's ResNet-50, random "
             "weights: time does not depend on them) runs on images upscaled from the CIFAR-10 archive's 32 px "
             "JPEGs (224 px by default): decoding is timed on these small, smooth files, and ImageNet's larger "
             "JPEGs decode more slowly, so the decoding figures are a lower bound for ImageNet. The full-size "
             "protocols projected from the per-image costs:", ""]
    lines += [f"- **{p.name}**: {p.description}; {p.train_steps:,} fine-tune steps at batch 64 "
              f"({p.train_images:,} training images)." for p in PROTOCOLS]
    # the formulas as project() computes them, from its docstring
    formulas, where = project.__doc__.split("\n\n")[1:3]
    lines += ["", "Projection formulas, in seconds:", "", "```", *(line.strip() for line in formulas.splitlines()),
              "```", "", " ".join(where.split()), ""]
    for device in ("cpu", "cuda"):
        if device in results:
            lines += render_run(results[device]) + [""]
        else:
            lines += [f"#### {'GPU' if device == 'cuda' else 'CPU'}: not measured yet", "",
                      "No run on " + ("a GPU" if device == "cuda" else "the CPU") + " has been recorded: "
                      f"`python benchmarks/bench_scale.py --device {device}` adds it.", ""]
    lines.append(MARK_END)
    return "\n".join(lines)


def machine(args, device) -> dict:
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cpus": _usable_cpus(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu}, no GPU",
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "note": args.note, "load": [os.getloadavg()[0]]}


# -- main ---------------------------------------------------------------------------------------
def projections(run: dict) -> list[dict]:
    return [project(run, p, precision) for p in PROTOCOLS for precision in run["finetune"]]


def publish(results: dict, args) -> None:
    """Print the section of ``results``; unless ``--no-write``, save them and rewrite BENCHMARKS.md."""
    section = render(results)
    print(section)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from sections import rewrite_section

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        rewrite_section(args.benchmarks, MARK_START, MARK_END, section, HEADING)
        print(f"# wrote {args.json} and the {MARK_START} section of {args.benchmarks}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.report_only:
        if not args.json.is_file():
            raise SystemExit(f"error: --report-only: no results at {args.json}")
        results = json.loads(args.json.read_text())
        for run in results.values():
            run["projections"] = projections(run)
        publish(results, args)
        return results
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: torch sees no CUDA device here (use --device cpu)")
    for key, value in DEVICE_DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.rss_worker:
        rss_worker(args)
        return {}
    if args.search_images < 1 or args.train_batch < 1 or args.repeats < 1 or args.steps < 1:
        raise SystemExit("error: --search-images, --train-batch, --repeats and --steps must be >= 1")
    device = torch.device(args.device)
    started = time.perf_counter()
    info = machine(args, device)
    needed = max(args.decode_images, 2 * args.search_images, args.train_batch, *args.rss_sizes)
    args.decode_images = max(args.decode_images, 2 * args.search_images, args.train_batch)
    folder = args.folder or make_folder(args.data, args.out / f"folder{args.image_size}",
                                        math.ceil(needed / 10), args.image_size)
    splits = splits_of(folder, args)
    if len(splits.train_plain) < needed:
        raise SystemExit(f"error: {folder}/train holds {len(splits.train_plain)} images; this run needs {needed}")
    print(f"# bench_scale: {args.model} at {args.image_size} px on {args.device} ({info['accelerator']}), "
          f"{args.threads} thread(s); {folder}", flush=True)

    decode, kept = decode_costs(splits, args)
    search = search_costs(kept, args, device)
    finetune = finetune_costs(kept, args, device)
    rss = rss_costs(args, folder) if args.rss_sizes else []
    info["load"].append(os.getloadavg()[0])
    sizes = {k: getattr(args, k) for k in DEVICE_DEFAULTS["cpu"]} | {"workers": args.workers}
    run = {
        "device": args.device, "date": datetime.date.today().isoformat(), "threads": args.threads,
        "command": "python benchmarks/bench_scale.py " + shlex.join(args.argv), "machine": info, "sizes": sizes,
        "model_title": f"{args.model} at {args.image_size} px, {NUM_CLASSES} classes, sparsity {args.target:g} (ERK)",
        "decode": decode, "search": search, "finetune": finetune, "rss": rss,
        "protocols": [asdict(p) for p in PROTOCOLS],
    }
    run["projections"] = projections(run)
    run["wall_s"] = time.perf_counter() - started

    results = json.loads(args.json.read_text()) if args.json.is_file() and not args.no_write else {}
    results[args.device] = run
    publish(results, args)
    return run


if __name__ == "__main__":
    main()
