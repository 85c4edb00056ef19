"""``unipts-export`` end to end on digits, and the export engine (fold, compressed format, ONNX)."""

import io
import json
import math

import numpy as np
import pytest
import torch

from unipts.data import digits
from unipts.export import (
    bit_equal, compress, decompress, export_network, fold_state_dict, initializers, masked_layer_names, ort_session,
    prunable_weight_keys, staged,
)
from unipts.models import build_model
from unipts.sparse import allocate, set_masks_, sparsify

from .conftest import FAST, read_summary, run_cli, tiny_net


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cli_env):
    """A digits_net pruned to 90% by unipts-prune (one-shot magnitude), then exported."""
    root = tmp_path_factory.mktemp("export")
    prune_dir, export_dir = root / "prune", root / "export"
    run_cli("prune", prune_dir, *FAST, "method=magnitude", env=cli_env)
    checkpoint = prune_dir / read_summary(prune_dir)["checkpoint"]
    run_cli("export", export_dir, f"checkpoint={checkpoint}", env=cli_env)
    report = json.loads((export_dir / "export.json").read_text())
    return prune_dir, export_dir, checkpoint, report


def _eval_images():
    data = digits().eval
    return torch.stack([data[i][0] for i in range(len(data))]), torch.stack([data[i][1] for i in range(len(data))])


def _masked_network(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("student."): v for k, v in state.items()}
    model = build_model({"name": "digits_net"}, 10, 1)
    sparsify(model)
    model.load_state_dict(state)
    return model.eval()


def test_export_report_is_consistent_with_the_files(exported):
    prune_dir, export_dir, checkpoint, report = exported
    for name in ("model.pt", "model.sparse.pt", "model.onnx", "export.json"):
        assert (export_dir / name).is_file()
    assert not [p.name for p in export_dir.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left
    assert set(report["files"].values()) == {"model.pt", "model.sparse.pt", "model.onnx"}
    assert report["checkpoint"] == str(checkpoint.resolve())
    assert report["model"] == "digits_net" and report["data"] == "digits" and report["input_shape"] == [1, 8, 8]
    assert report["compressed_size_bytes"] == (export_dir / "model.sparse.pt").stat().st_size
    assert report["model_pt_size_bytes"] == (export_dir / "model.pt").stat().st_size
    assert report["onnx_size_bytes"] == (export_dir / "model.onnx").stat().st_size
    state = torch.load(export_dir / "model.pt", map_location="cpu", weights_only=True)
    assert report["dense_size_bytes"] == sum(t.numel() * t.element_size() for t in state.values())
    assert report["compressed_size_ratio"] == pytest.approx(report["compressed_size_bytes"] / report["dense_size_bytes"])
    assert report["compressed_size_ratio"] < 0.25  # 90% sparse: about 0.13x of fp32 plus the archive's overhead
    assert report["achieved_sparsity"] == pytest.approx(read_summary(prune_dir)["achieved_sparsity"])
    assert report["compressed_roundtrip_exact"] and report["folded_matches_masked"] and report["model_pt_reloads_exactly"]
    assert report["onnx_matches_torch"] and report["onnx_max_abs_diff"] <= 1e-4
    assert report["onnx_weights_identical"]
    assert report["onnx_zero_weights"] == report["torch_zero_weights"] == report["zero_weights"]


def test_model_pt_is_plain_and_reproduces_the_pruned_network(exported):
    prune_dir, export_dir, checkpoint, _ = exported
    state = torch.load(export_dir / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.endswith((".mask", ".target_sparsity")) for k in state)
    plain = build_model({"name": "digits_net"}, 10, 1)
    plain.load_state_dict(state, strict=True)
    plain.eval()
    images, labels = _eval_images()
    with torch.no_grad():
        logits = plain(images)
        assert torch.equal(logits, _masked_network(checkpoint)(images))  # identical, not merely close
    top1 = (logits.argmax(1) == labels).float().mean().item()
    assert top1 == pytest.approx(read_summary(prune_dir)["top1"], abs=1e-6)


def test_compressed_file_decompresses_bit_exactly(exported):
    _, export_dir, _, _ = exported
    state = torch.load(export_dir / "model.pt", map_location="cpu", weights_only=True)
    restored = decompress(export_dir / "model.sparse.pt")
    assert list(restored) == list(state)
    for key, tensor in state.items():
        assert bit_equal(restored[key], tensor), key  # dtype, shape and bits (signs of zeros too)
    raw = torch.load(export_dir / "model.sparse.pt", map_location="cpu", weights_only=True)
    assert set(raw["sparse"]) == {f"{name}.weight" for name in ("features.0", "features.3", "features.7", "fc")}


def test_onnx_matches_torch_on_real_eval_images(exported):
    _, export_dir, _, _ = exported
    state = torch.load(export_dir / "model.pt", map_location="cpu", weights_only=True)
    plain = build_model({"name": "digits_net"}, 10, 1)
    plain.load_state_dict(state)
    images, _ = _eval_images()
    session = ort_session(export_dir / "model.onnx", threads=1)
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        want = plain.eval()(images).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    inits = initializers(export_dir / "model.onnx")
    for key in prunable_weight_keys(plain):
        assert np.array_equal(inits[key], state[key].numpy()), key  # the zeros are stored, unchanged


@pytest.mark.parametrize("kind,expected", [("missing", "no file at"), ("folder", "is a folder"),
                                            ("garbage", "not a readable weights-only checkpoint")])
def test_bad_checkpoint_fails_with_one_clear_line(kind, expected, tmp_path, cli_env):
    path = {"missing": tmp_path / "nonexistent" / "final.ckpt", "folder": tmp_path, "garbage": tmp_path / "garbage.ckpt"}[kind]
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    run_dir = tmp_path / "bad"
    proc = run_cli("export", run_dir, f"checkpoint={path}", env=cli_env, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: checkpoint: "), proc.stderr[-2000:]
    assert expected in errors[0] and str(path) in errors[0]
    assert len(proc.stderr.strip().splitlines()[-1]) < 400 and "Traceback" not in proc.stderr
    assert not (run_dir / "export.json").exists() and not (run_dir / "model.pt").exists()


def test_plain_state_dict_needs_its_architecture_named(exported, tmp_path, cli_env):
    _, export_dir, _, report = exported
    proc = run_cli("export", tmp_path / "no_meta", f"checkpoint={export_dir / 'model.pt'}", env=cli_env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: checkpoint: {export_dir / 'model.pt'} records no run (no unipts metadata")
    assert "model=<name>" in errors[0]
    again = tmp_path / "named"
    run_cli("export", again, f"checkpoint={export_dir / 'model.pt'}", "model=digits_net", "data=digits", env=cli_env)
    second = json.loads((again / "export.json").read_text())
    assert second["achieved_sparsity"] == pytest.approx(report["achieved_sparsity"])
    first, other = decompress(export_dir / "model.sparse.pt"), decompress(again / "model.sparse.pt")
    assert list(first) == list(other) and all(torch.equal(first[k], other[k]) for k in first)


# --- the engine, in-process -----------------------------------------------------------------------


def _roundtrip(state, sparse_keys=None):
    obj = compress(state, list(state) if sparse_keys is None else sparse_keys)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return obj, decompress(torch.load(buffer, weights_only=True))


@pytest.mark.parametrize("shape", [(1,), (7,), (13,), (3, 5, 3), (8,), (2, 3, 3, 3)])
@pytest.mark.parametrize("kind", ["all_zero", "no_zero", "sparse"])
def test_compress_roundtrip_edge_cases(shape, kind):
    t = torch.randn(shape)
    if kind == "all_zero":
        t = torch.zeros(shape)
    elif kind == "no_zero":
        t = t.abs() + 0.5
    else:
        t[torch.rand(shape) < 0.7] = 0.0
    obj, back = _roundtrip({"w": t})
    entry = obj["sparse"]["w"]
    n = t.numel()
    assert entry["bits"].dtype == torch.uint8 and entry["bits"].numel() == math.ceil(n / 8)
    assert entry["values"].numel() == int(t.count_nonzero())
    assert entry["values"].dtype == torch.float32
    assert bit_equal(back["w"], t)


def test_compress_keeps_dtypes_order_and_dense_tensors():
    state = {
        "conv.weight": torch.tensor([[0.0, 1.5, 0.0], [-2.0, 0.0, 0.0]]),
        "bn.num_batches_tracked": torch.tensor(7),
        "bn.running_var": torch.zeros(3),
        "half.weight": torch.tensor([0.0, 0.25, 0.0, -1.0, 0.0], dtype=torch.float16),
        "bf.weight": torch.tensor([0.0, 3.0, float("nan")], dtype=torch.bfloat16),
        "empty.weight": torch.zeros(0, 3),
    }
    obj, back = _roundtrip(state, ["conv.weight", "half.weight", "bf.weight", "empty.weight"])
    assert set(obj["dense"]) == {"bn.num_batches_tracked", "bn.running_var", "empty.weight"}
    assert list(back) == list(state)
    for key, t in state.items():
        assert bit_equal(back[key], t), key  # NaN included
    assert obj["sparse"]["half.weight"]["values"].dtype == torch.float16
    with pytest.raises(KeyError):
        compress(state, ["nope.weight"])
    with pytest.raises(ValueError):
        decompress({"format": "something else"})


def test_negative_zero_is_a_zero():
    t = torch.tensor([-0.0, 1.0, 0.0, -3.0, -0.0, 0.0, 0.0, 2.0, -0.0])
    obj, back = _roundtrip({"w": t})
    assert obj["sparse"]["w"]["values"].tolist() == [1.0, -3.0, 2.0]
    assert torch.equal(back["w"], t) and not torch.signbit(back["w"][back["w"] == 0]).any()
    assert not bit_equal(back["w"], t)  # the one documented exception: -0.0 comes back as +0.0


def test_fold_state_dict_loads_strictly_and_computes_the_masked_outputs():
    masked = sparsify(tiny_net(), exclude=["fc"])
    set_masks_(masked, allocate(masked, "uniform", 0.8))
    state = masked.state_dict()
    folded = fold_state_dict(state)
    assert masked_layer_names(state) == ["features.0", "features.3", "features.7"]
    assert not any(k.endswith((".mask", ".target_sparsity")) for k in folded)
    assert not torch.signbit(folded["features.0.weight"][folded["features.0.weight"] == 0]).any()
    plain = tiny_net()
    plain.load_state_dict(folded, strict=True)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), masked.eval()(x))
    assert fold_state_dict(folded).keys() == folded.keys()  # nothing to fold: unchanged


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_network_with_either_exporter(exporter, tmp_path):
    masked = sparsify(tiny_net())
    set_masks_(masked, allocate(masked, "global", 0.9))
    plain = tiny_net()
    plain.load_state_dict(fold_state_dict(masked.state_dict()))
    keys = prunable_weight_keys(plain)
    report = export_network(plain, tmp_path, torch.randn(4, 1, 8, 8), keys, reference=masked, exporter=exporter)
    assert report["onnx_opset"] == (17 if exporter == "torchscript" else 18)
    assert report["onnx_matches_torch"] and report["onnx_weights_identical"] and report["folded_matches_masked"]
    assert report["onnx_zero_weights"] == report["zero_weights"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt", "model.sparse.pt"]


def test_staged_files_are_removed_when_the_export_fails(tmp_path):
    (tmp_path / "model.pt").write_text("an earlier complete file")
    with pytest.raises(RuntimeError):
        with staged(tmp_path, ["model.pt", "model.onnx"]) as tmp:
            tmp["model.pt"].write_text("half")
            raise RuntimeError("exporter crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert (tmp_path / "model.pt").read_text() == "an earlier complete file"
