"""Export file sizes, and CPU latency of dense vs 90%-sparse networks in several runtimes.

    python benchmarks/bench_deploy.py [--threads 2] [--quick] [--no-write] [--keep-files]

1. Size: the committed dense CIFAR-10 ResNet-20 (``assets/cifar10_resnet20.pt``) pruned by global
   magnitude to 0.5/0.7/0.9 and exported with :func:`unipts.export.export_network`: the dense fp32
   bytes, ``model.pt``, ``model.sparse.pt`` (bitmask + non-zero values) and ``model.onnx``, and the
   ONNX file with its weights as ONNX ``sparse_initializer`` (COO).
2. Latency: ResNet-20 at 32x32 (the asset; global magnitude 0.9) and torchvision ResNet-50 at
   224x224 (random weights, seed 0; every Conv/Linear pruned to 0.9 by magnitude), dense vs
   sparse side by side: PyTorch eager, PyTorch with every convolution as im2col + CSR sparse
   matmul, onnxruntime (on the plain ONNX file and on the sparse_initializer one), and DeepSparse
   1.8.0, which runs in its own environment (``make deepsparse-env``: ``.venv-deepsparse``) in a
   subprocess on the same ONNX files (this script, ``--deepsparse-worker``). Batch 1: median of
   ``--runs`` calls after warm-up; throughput at a larger batch: images per second from the
   median batch time. Dense and sparse runs of one runtime alternate in blocks, so a change of
   machine load hits both alike.

The section of BENCHMARKS.md between the ``deploy`` markers is rewritten from these measurements
(``--no-write``: print it only). The top-level imports are the standard library only: the
DeepSparse worker runs this file in an environment without torch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- deploy:start -->", "<!-- deploy:end -->"
DS_PYTHON = REPO / ".venv-deepsparse" / "bin" / "python"
SIZE_TARGETS = (0.0, 0.5, 0.7, 0.9)
TARGET = 0.9
BASELINE = ("onnxruntime", "dense")  # the speed-up columns are against this runtime


def time_interleaved(fns: dict, runs: int, warmup: int, blocks: int = 5) -> dict[str, list[float]]:
    """Seconds per call of each function: ``warmup`` untimed calls each, then ``runs`` timed calls
    each, in ``blocks`` alternating blocks."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_block = [runs // blocks + (1 if i < runs % blocks else 0) for i in range(blocks)]
    for count in per_block:
        for name, fn in fns.items():
            for _ in range(count):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


# --- DeepSparse, in .venv-deepsparse (numpy and deepsparse only) ----------------------------------


def deepsparse_worker(job_path: str) -> None:
    import numpy as np
    import deepsparse
    from deepsparse import compile_model

    job = json.loads(Path(job_path).read_text())
    result: dict = {"version": deepsparse.__version__, "models": {}}
    for m in job["models"]:
        entry: dict = {}
        for cores in job["cores"]:
            timed: dict = {}
            for key, batch, runs, warmup in (("b1", 1, m["runs1"], m["warmup1"]),
                                             ("bB", m["batch"], m["runsB"], m["warmupB"])):
                x = [np.load(m["input1"])] if batch == 1 else [
                    np.random.default_rng(0).standard_normal((batch, *m["shape"]), dtype=np.float32)]
                engines = {v: compile_model(m[v], batch_size=batch, num_cores=cores) for v in ("dense", "sparse")}
                timed[key] = time_interleaved({v: (lambda e=e: e.run(x)) for v, e in engines.items()}, runs, warmup)
                if batch == 1:
                    timed["outputs"] = {v: e.run(x)[0].tolist() for v, e in engines.items()}
                del engines
            entry[str(cores)] = timed
        result["models"][m["name"]] = entry
    Path(job["out"]).write_text(json.dumps(result))


def run_deepsparse(python: Path, models: list[dict], threads: int, work: Path) -> tuple[dict | None, str]:
    """DeepSparse timings from the worker subprocess, or None and the reason it did not run."""
    if not python.exists():
        return None, f"`{python.relative_to(REPO) if python.is_relative_to(REPO) else python}` not found (`make deepsparse-env`)"
    cores = [threads, 1] if threads > 1 else [threads]
    job = {"models": models, "cores": cores, "out": str(work / "deepsparse.json")}
    (work / "deepsparse_job.json").write_text(json.dumps(job))
    env = dict(os.environ, NM_DISABLE_ANALYTICS="1")
    proc = subprocess.run([str(python), __file__, "--deepsparse-worker", str(work / "deepsparse_job.json")],
                          capture_output=True, text=True, env=env, timeout=1800)
    (work / "deepsparse.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"the DeepSparse worker failed ({tail[0][:200]}; log: {work / 'deepsparse.log'})"
    return json.loads((work / "deepsparse.json").read_text()), ""


# --- the main process (the project's environment) -------------------------------------------------


def machine_info() -> dict:
    import onnx
    import onnxruntime
    import torch

    cpu = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {
        "cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags],
        "mem_gib": mem, "python": platform.python_version(), "torch": torch.__version__.split("+")[0],
        "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
    }


def pruned(model, rule: str, target: float):
    """A copy of ``model`` with its Conv/Linear weights pruned by magnitude (``rule`` allocation)."""
    import copy

    from unipts.sparse import allocate, set_masks_, sparsify, unsparsify

    model = copy.deepcopy(model)
    if target > 0:
        sparsify(model)
        set_masks_(model, allocate(model, rule, target))
        unsparsify(model)
    return model.eval()


def sparse_initializer_onnx(src: Path, dst: Path, min_sparsity: float = 0.5) -> int:
    """``src`` with every initializer of rank >= 2 and at least ``min_sparsity`` zeros stored as
    an ONNX ``sparse_initializer`` (COO, linear int64 indices). Returns the new file's size."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    keep, sparse = [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim >= 2 and array.size and (array == 0).mean() >= min_sparsity:
            flat = array.reshape(-1)
            index = np.flatnonzero(flat).astype(np.int64)
            sparse.append(helper.make_sparse_tensor(numpy_helper.from_array(flat[index], init.name),
                                                    numpy_helper.from_array(index, ""), list(array.shape)))
        else:
            keep.append(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.sparse_initializer.extend(sparse)
    onnx.save(model, str(dst))
    return dst.stat().st_size


def csr_network(model):
    """``model`` (a copy) with every Conv2d (groups 1) as im2col + CSR matmul and every Linear as a
    CSR matmul: PyTorch's own sparse kernels on the pruned weights."""
    import copy

    import torch
    import torch.nn.functional as F
    from torch import nn

    class CsrConv2d(nn.Module):
        def __init__(self, conv: nn.Conv2d) -> None:
            super().__init__()
            self.weight = conv.weight.detach().reshape(conv.out_channels, -1).to_sparse_csr()
            self.bias = None if conv.bias is None else conv.bias.detach().view(1, -1, 1, 1)
            self.k, self.s, self.p, self.d = conv.kernel_size, conv.stride, conv.padding, conv.dilation

        def forward(self, x):
            n, _, h, w = x.shape
            cols = F.unfold(x, self.k, self.d, self.p, self.s)  # n, c*kh*kw, L
            ho = (h + 2 * self.p[0] - self.d[0] * (self.k[0] - 1) - 1) // self.s[0] + 1
            wo = (w + 2 * self.p[1] - self.d[1] * (self.k[1] - 1) - 1) // self.s[1] + 1
            if n == 1:
                y = self.weight @ cols[0]
            else:
                y = self.weight @ cols.transpose(0, 1).reshape(cols.shape[1], -1)
                y = y.reshape(y.shape[0], n, -1).transpose(0, 1)
            y = y.reshape(n, -1, ho, wo)
            return y if self.bias is None else y + self.bias

    class CsrLinear(nn.Module):
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.weight = linear.weight.detach().to_sparse_csr()
            self.bias = None if linear.bias is None else linear.bias.detach()

        def forward(self, x):
            y = (self.weight @ x.t()).t()
            return y if self.bias is None else y + self.bias

    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and module.groups == 1 and isinstance(module.padding, tuple):
            replacement = CsrConv2d(module)
        elif isinstance(module, nn.Linear):
            replacement = CsrLinear(module)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    return model


def size_rows(dense, work: Path) -> list[dict]:
    import torch

    from unipts.export import export_network, prunable_weight_keys

    rows = []
    for target in SIZE_TARGETS:
        model = pruned(dense, "global", target)
        out = work / f"size_{target}"
        r = export_network(model, out, torch.randn(2, 3, 32, 32), prunable_weight_keys(model))
        assert r["compressed_roundtrip_exact"] and r["onnx_matches_torch"] and r["onnx_weights_identical"], r
        rows.append({"target": target, "sparsity": r["achieved_sparsity"], "dense": r["dense_size_bytes"],
                     "model_pt": r["model_pt_size_bytes"], "compressed": r["compressed_size_bytes"],
                     "ratio": r["compressed_size_ratio"], "onnx": r["onnx_size_bytes"],
                     "onnx_sparse_init": sparse_initializer_onnx(out / "model.onnx", out / "model.sparse_init.onnx")})
    return rows


def latency_case(name: str, dense, sparse, shape, batch: int, work: Path, args) -> dict:
    """Export both networks, time PyTorch and onnxruntime, and prepare the DeepSparse job."""
    import numpy as np
    import torch

    from unipts.export import export_network, ort_session, prunable_weight_keys

    paths = {}
    for variant, model in (("dense", dense), ("sparse", sparse)):
        out = work / f"{name}_{variant}"
        r = export_network(model, out, torch.randn(2, *shape), prunable_weight_keys(model))
        assert r["onnx_matches_torch"] and r["onnx_weights_identical"], r
        paths[variant] = out / "model.onnx"
        if variant == "sparse":
            paths["sparse_init"] = out / "model.sparse_init.onnx"
            sparse_initializer_onnx(paths["sparse"], paths["sparse_init"])
        sparsity = r["achieved_sparsity"]
    x1 = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    xb = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(2))
    np.save(work / f"{name}_input1.npy", x1.numpy())
    with torch.inference_mode():
        reference = {"dense": dense(x1).numpy(), "sparse": sparse(x1).numpy()}
    runs = {"b1": (args.runs, args.warmup), "bB": (args.batch_runs, args.batch_warmup)}
    results: dict = {}

    def record(runtime: str, fns: dict, outputs: dict) -> None:
        for key, x in (("b1", x1), ("bB", xb)):
            chosen = {v: f for v, f in fns.items() if key == "b1" or v != "sparse_csr"}  # CSR: batch 1 only
            times = time_interleaved({v: (lambda f=f, x=x: f(x)) for v, f in chosen.items()}, *runs[key])
            for v, t in times.items():
                results.setdefault((runtime, v), {})[key] = t
        for v, out in outputs.items():
            weights = "dense" if v == "dense" else "sparse"
            results[(runtime, v)]["diff"] = float(np.abs(out - reference[weights]).max())

    def torch_call(model):
        def call(x):
            with torch.inference_mode():
                return model(x)
        return call

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta state"
        csr = csr_network(sparse)
    fns = {"dense": torch_call(dense), "sparse": torch_call(sparse), "sparse_csr": torch_call(csr)}
    record("PyTorch", fns, {v: fns[v](x1).numpy() for v in fns})
    sessions = {v: ort_session(p, threads=args.threads) for v, p in paths.items()}
    ort_fns = {v: (lambda x, s=s: s.run(None, {"input": x.numpy()})[0]) for v, s in sessions.items()}
    record("onnxruntime", ort_fns, {v: ort_fns[v](x1) for v in ort_fns})
    job = {"name": name, "dense": str(paths["dense"]), "sparse": str(paths["sparse"]), "shape": list(shape),
           "batch": batch, "input1": str(work / f"{name}_input1.npy"), "runs1": args.runs, "warmup1": args.warmup,
           "runsB": args.batch_runs, "warmupB": args.batch_warmup}
    return {"name": name, "results": results, "batch": batch, "sparsity": sparsity, "job": job, "reference": reference}


def add_deepsparse(case: dict, ds: dict, threads: int) -> None:
    import numpy as np

    for cores, entry in ds["models"][case["name"]].items():
        runtime = "DeepSparse" if int(cores) == threads else f"DeepSparse{cores}"
        for v in ("dense", "sparse"):
            out = np.asarray(entry["outputs"][v], dtype=np.float32)
            case["results"][(runtime, v)] = {"b1": entry["b1"][v], "bB": entry["bB"][v],
                                             "diff": float(np.abs(out - case["reference"][v]).max())}


LABELS = {
    ("PyTorch", "dense"): ("PyTorch (eager)", "dense"),
    ("PyTorch", "sparse"): ("PyTorch (eager)", "90% sparse"),
    ("PyTorch", "sparse_csr"): ("PyTorch, conv as im2col + CSR matmul", "90% sparse"),
    ("onnxruntime", "dense"): ("onnxruntime", "dense"),
    ("onnxruntime", "sparse"): ("onnxruntime", "90% sparse"),
    ("onnxruntime", "sparse_init"): ("onnxruntime, ONNX sparse_initializer", "90% sparse"),
    ("DeepSparse", "dense"): ("DeepSparse", "dense"),
    ("DeepSparse", "sparse"): ("DeepSparse", "90% sparse"),
    ("DeepSparse1", "dense"): ("DeepSparse, 1 core", "dense"),
    ("DeepSparse1", "sparse"): ("DeepSparse, 1 core", "90% sparse"),
}


def x(ratio: float) -> str:
    """A speed-up: two decimals (1.26x), or two significant digits below 0.1 (0.0028x)."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def latency_table(case: dict) -> str:
    res, batch = case["results"], case["batch"]
    base1, baseB = ms(res[BASELINE]["b1"]), ms(res[BASELINE]["bB"])
    lines = [f"| runtime | weights | batch 1: median ms | speed-up | batch {batch}: images/s | speed-up | "
             "max abs diff of the logits vs PyTorch |", "|---|---|---|---|---|---|---|"]
    for key, (runtime, weights) in LABELS.items():
        if key not in res:
            continue
        r = res[key]
        t1 = ms(r["b1"])
        big = f"{1000 * batch / ms(r['bB']):.0f} | {x(baseB / ms(r['bB']))}" if "bB" in r else "not timed | "
        lines.append(f"| {runtime} | {weights} | {t1:.2f} | {x(base1 / t1)} | {big} | {r['diff']:.1e} |")
    return "\n".join(lines)


def findings(cases: list[dict], threads: int) -> list[str]:
    out = []
    for case in cases:
        t = {k: ms(v["b1"]) for k, v in case["results"].items()}
        name = case["title"].split(" (")[0]
        out.append(f"{name}, batch 1, sparse time over dense time in the same runtime: onnxruntime "
                   f"{t[('onnxruntime', 'sparse')] / t[('onnxruntime', 'dense')]:.2f}, PyTorch eager "
                   f"{t[('PyTorch', 'sparse')] / t[('PyTorch', 'dense')]:.2f}, PyTorch with CSR convolutions over PyTorch dense "
                   f"{t[('PyTorch', 'sparse_csr')] / t[('PyTorch', 'dense')]:.2f}.")
        if ("DeepSparse", "sparse") in t:
            out.append(f"{name}, batch 1: DeepSparse on the sparse network {t[('DeepSparse', 'sparse')]:.2f} ms "
                       f"against onnxruntime dense {t[('onnxruntime', 'dense')]:.2f} ms (speed-up "
                       f"{x(t[('onnxruntime', 'dense')] / t[('DeepSparse', 'sparse')])}) and DeepSparse dense "
                       f"{t[('DeepSparse', 'dense')]:.2f} ms (speed-up {x(t[('DeepSparse', 'dense')] / t[('DeepSparse', 'sparse')])}).")
        res, batch = case["results"], case["batch"]
        if "bB" in res.get(("DeepSparse", "sparse"), {}):
            speedup = ms(res[BASELINE]["bB"]) / ms(res[("DeepSparse", "sparse")]["bB"])
            out.append(f"{name}, batch {batch}: DeepSparse on the sparse network gives {x(speedup)} the throughput "
                       "of onnxruntime dense.")
        if ("DeepSparse1", "sparse") in t and t[("DeepSparse", "sparse")] > t[("DeepSparse1", "sparse")]:
            out.append(f"{name}: DeepSparse on {threads} cores was slower at batch 1 than on 1 core "
                       f"({t[('DeepSparse', 'sparse')]:.2f} vs {t[('DeepSparse1', 'sparse')]:.2f} ms); the load "
                       "average above says whether anything else was running.")
    return out


def render(info: dict, sizes: list[dict], cases: list[dict], ds_version: str | None, ds_reason: str, args,
           load: tuple, elapsed: float) -> str:
    command = (f"python benchmarks/bench_deploy.py --threads {args.threads}" + (" --quick" if args.quick else "")
               + ("" if len(args.models) == 2 else f" --models {' '.join(args.models)}"))
    quick = (" **Quick run (`--quick`): few iterations, for checking the script, not for quoting.**"
             if args.quick else "")
    ds = f"DeepSparse {ds_version}" if ds_version else f"DeepSparse not run: {ds_reason}"
    lines = [
        MARK_START,
        f"Generated by `{command}` on {datetime.date.today().isoformat()}, in "
        f"{elapsed:.0f} s.{quick}",
        "",
        f"Machine: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} usable; "
        f"{', '.join(info['isa']) or 'no AVX2'}), {info['mem_gib']:.1f} GiB; Python {info['python']}, "
        f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, {ds}. "
        f"Threads: {args.threads} in every runtime (`torch.set_num_threads`, onnxruntime `intra_op_num_threads`, "
        f"DeepSparse `num_cores`{'; DeepSparse also on 1 core' if ds_version and args.threads > 1 else ''}). Load average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
        "",
        "### File size: CIFAR-10 ResNet-20 (`assets/cifar10_resnet20.pt`), global magnitude pruning",
        "",
        "Every Conv/Linear weight pruned; `model.sparse.pt` is the bitmask + non-zero values file of "
        "`unipts-export` (decompresses bit for bit); the ratio is its size over the dense fp32 tensor bytes. "
        "The last column is `model.onnx` with its sparse weights as ONNX `sparse_initializer` (COO, int64 indices).",
        "",
        "| sparsity | dense fp32 bytes | model.pt | model.sparse.pt | ratio | model.onnx | ONNX sparse_initializer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sizes:
        lines.append(f"| {r['sparsity']:.4f} | {r['dense']:,} | {r['model_pt']:,} | {r['compressed']:,} | "
                     f"**{r['ratio']:.3f}x** | {r['onnx']:,} | {r['onnx_sparse_init']:,} |")
    lines += ["", "### Latency on the CPU, dense vs 90% sparse", ""]
    for case in cases:
        lines += [f"**{case['title']}** (achieved sparsity {case['sparsity']:.4f}; batch 1: median of {args.runs} "
                  f"calls after {args.warmup} warm-up calls; batch {case['batch']}: median of {args.batch_runs} calls "
                  f"after {args.batch_warmup}). Speed-ups are against onnxruntime dense.", "", latency_table(case), ""]
    lines += ["Findings (computed from the tables above):", ""]
    lines += [f"- {line}" for line in findings(cases, args.threads)]
    lines += [
        "",
        "Runtimes tried for unstructured sparsity on the CPU: onnxruntime has no kernel that skips zero weights "
        "(its `sparse_initializer` support densifies the weights when the session is created: a smaller file, the "
        "same time); PyTorch's CSR matmul (MKL sparse BLAS) is used above for every convolution through im2col "
        "(`F.unfold`), which pays for the unfolded activations; DeepSparse 1.8.0 (end-of-life, pins numpy 1.x and "
        "onnx 1.14, so it lives in `.venv-deepsparse`) reads the same `model.onnx` (opset 17, IR 8; the dynamo "
        "exporter's opset 18 file crashed its planner); its layer analysis (`deepsparse.engine.model_debug_analysis`) "
        "lists the pruned convolutions as kernel-sparse (`ks_convolution`)."
        + (" DeepSparse is also timed on 1 core, which a busy machine disturbs less than its multi-core run."
           if ds_version and args.threads > 1 else ""),
        MARK_END,
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--runs", type=int, default=100, help="timed batch-1 calls per network and runtime")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-runs", type=int, default=20, help="timed large-batch calls per network and runtime")
    p.add_argument("--batch-warmup", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet50"], choices=["resnet20", "resnet50"],
                   help="networks to time (default both)")
    p.add_argument("--quick", action="store_true", help="few iterations: checks the script, numbers not for quoting")
    p.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    p.add_argument("--deepsparse-python", type=Path, default=DS_PYTHON)
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "deploy")
    p.add_argument("--keep-files", action="store_true",
                   help="keep the exported networks (about 0.5 GB; by default only results.json and logs stay)")
    p.add_argument("--deepsparse-worker", metavar="JOB", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.deepsparse_worker:
        deepsparse_worker(args.deepsparse_worker)
        return
    if args.quick:
        args.runs, args.warmup, args.batch_runs, args.batch_warmup = 10, 2, 2, 1

    import torch

    from unipts.models import build_model, load_weights, read_state_dict

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run_", dir=args.out))
    print(f"bench_deploy: {args.threads} threads, files under {work}", flush=True)

    resnet20 = build_model({"name": "resnet20"}, 10, 3)
    asset = REPO / "assets" / "cifar10_resnet20.pt"
    load_weights(resnet20, read_state_dict(asset, "asset"), asset, "asset")
    resnet20.eval()
    sizes = size_rows(resnet20, work)
    print("sizes:", [(round(r["sparsity"], 3), round(r["ratio"], 3)) for r in sizes], flush=True)

    resnet50 = build_model({"name": "resnet50"}, 1000, 3).eval()
    cases = []
    for name, title, dense, rule, shape, batch in (
        ("resnet20", "ResNet-20, 32x32 (CIFAR-10 asset, global magnitude)", resnet20, "global", (3, 32, 32), 64),
        ("resnet50", "ResNet-50, 224x224 (torchvision, random weights, uniform magnitude)", resnet50, "uniform",
         (3, 224, 224), 16),
    ):
        if name not in args.models:
            continue
        case = latency_case(name, dense, pruned(dense, rule, TARGET), shape, batch, work, args)
        case["title"] = title
        cases.append(case)
        print(f"{name}: PyTorch and onnxruntime timed", flush=True)
    ds, reason = run_deepsparse(args.deepsparse_python, [c["job"] for c in cases], args.threads, work)
    if ds is not None:
        for case in cases:
            add_deepsparse(case, ds, args.threads)
    else:
        print(f"DeepSparse skipped: {reason}", flush=True)
    raw = {"info": info, "sizes": sizes, "deepsparse": ds and ds["version"],
           "cases": [{"name": c["name"], "batch": c["batch"], "sparsity": c["sparsity"],
                      "results": {f"{k[0]}/{k[1]}": v for k, v in c["results"].items()}} for c in cases]}
    (work / "results.json").write_text(json.dumps(raw))
    section = render(info, sizes, cases, ds["version"] if ds else None, reason, args,
                     (load_start, os.getloadavg()[0]), time.perf_counter() - started)
    if not args.keep_files:
        import shutil

        for path in work.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.suffix == ".npy":
                path.unlink()
    print(section)
    if not args.no_write:
        from sections import rewrite_section  # benchmarks/sections.py, beside this file

        rewrite_section(REPO / "BENCHMARKS.md", MARK_START, MARK_END, section, "## Export and deployment (issue 6)")
        print(f"BENCHMARKS.md: section {MARK_START} rewritten")


if __name__ == "__main__":
    main()
