"""benchmarks/bench_scale.py: the projection's arithmetic, the BENCHMARKS.md section rewrite, and
one tiny end-to-end run (ResNet-18 on a folder of random 32 px images, every size cut to a few)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(BENCHMARKS))  # bench_scale imports sections.py from beside itself
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("bench_scale")


def _run(device: str) -> dict:
    return {"device": device, "sizes": {"workers": 4},
            "search": {"bf16/channels_last": {"apply": 0.5, "bn": 0.01, "eval": 0.02}},
            "finetune": {"bf16": {"step": 0.1, "remask": 2.0}},
            "decode": {"keep/0": 0.003, "keep/4": 0.001, "load/0": 0.3, "load/4": 0.2}}


def test_projection_formulas(bench):
    released, unipts = bench.PROTOCOLS
    assert (released.evaluations, released.bn_images, released.fitness_images) == (625, 10_240, 10_240)
    assert (released.train_images, released.train_steps) == (1_024_000, 16_000)
    # unipts' sizes are experiment=imagenet_resnet50's: over 16x fewer forward images than the released ones
    assert (unipts.calib, unipts.kept_images, unipts.evaluations) == (10_240, 2_048, 375)
    assert (unipts.bn_images, unipts.fitness_images, unipts.dense_images) == (1_024, 1_024, 1_024)
    forward = [p.evaluations * (p.bn_images + p.fitness_images) for p in (released, unipts)]
    assert forward == [12_800_000, 768_000]
    cpu = bench.project(_run("cpu"), released, "bf16")
    assert cpu["search_s"] == pytest.approx(625 * (0.5 + 10_240 * 0.01 + 10_240 * 0.02))
    assert cpu["steps_s"] == pytest.approx(16_000 * 2.0 + 1_024_000 * 0.1)
    # on the CPU the loader's processes share the cores with the steps: their time adds
    assert cpu["decode_s"] == pytest.approx(10_240 * 0.001)
    assert cpu["loader_s"] == pytest.approx(1_024_000 * 0.2)
    assert cpu["total_s"] == pytest.approx(cpu["decode_s"] + cpu["search_s"] + cpu["steps_s"] + cpu["loader_s"])
    # on a GPU the loader's workers run beside the steps: the slower of the two counts
    gpu = bench.project(_run("cuda"), unipts, "bf16")
    assert gpu["search_s"] == pytest.approx(375 * (0.5 + 1_024 * 0.01 + 1_024 * 0.02) + 1_024 * 0.02)
    assert gpu["loader_s"] == pytest.approx(1_024_000 * 0.2)
    assert gpu["total_s"] == pytest.approx(2_048 * 0.001 + gpu["search_s"] + max(gpu["steps_s"], gpu["loader_s"]))


def test_rewrite_section(tmp_path):
    sections = _load("sections")
    path = tmp_path / "B.md"
    path.write_text("# Benchmarks\n\ntext\n")
    start, end = "<!-- x:start -->", "<!-- x:end -->"
    sections.rewrite_section(path, start, end, f"{start}\none\n{end}", "## X")
    sections.rewrite_section(path, start, end, f"{start}\ntwo\n{end}", "## X")
    assert path.read_text() == "# Benchmarks\n\ntext\n\n## X\n\n<!-- x:start -->\ntwo\n<!-- x:end -->\n"
    with pytest.raises(ValueError):
        sections.rewrite_section(path, start, end, "no markers", "## X")


@pytest.mark.slow  # about 40 s on a loaded 2-core machine, most of it importing torch in three processes
def test_tiny_run(bench, tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 1)):
        for cls in ("a", "b"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "folder" / split / cls / f"{i}.jpg")
    out, md = tmp_path / "scale.json", tmp_path / "B.md"
    md.write_text("# Benchmarks\n")
    bench.main(["--device", "cpu", "--threads", "1", "--folder", str(tmp_path / "folder"), "--model", "resnet18",
                "--image-size", "32", "--precisions", "fp32", "--layouts", "channels_last", "--search-images", "2",
                "--search-batch", "2", "--repeats", "1", "--train-batch", "2", "--steps", "1", "--warmup-steps", "0",
                "--decode-images", "4", "--workers", "0", "--rss-sizes", "4", "8", "--json", str(out),
                "--benchmarks", str(md)])
    run = json.loads(out.read_text())["cpu"]
    assert {r["protocol"] for r in run["projections"]} == {"released", "unipts"}
    assert all(r["total_s"] > 0 for r in run["projections"])
    assert [r["images"] for r in run["rss"]] == [4, 8]
    assert all(r["peak_rss"] >= r["rss_before"] > 0 for r in run["rss"])
    text = md.read_text()
    assert text.count(bench.MARK_START) == 1 and text.count(bench.MARK_END) == 1
    assert "#### GPU: not measured yet" in text
    # the report alone, from the saved results: the same section, rewritten in place
    bench.main(["--report-only", "--json", str(out), "--benchmarks", str(md)])
    assert md.read_text() == text
