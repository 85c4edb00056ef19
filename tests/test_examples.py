"""The scripts in examples/ run as a user would run them, on small inputs."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_imagefolder import _jpeg_tree

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_api_on_digits_prunes_a_network_trained_in_plain_pytorch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its run goes to outputs/<date>/<time> under the working directory
    result = _load("api_digits").main("unipts_erk", epochs=2, dense_epochs=4)
    assert result.summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert result.summary["dense_top1"] > 0.95  # measured 0.986
    assert result.summary["top1"] > 0.4  # measured 0.50 after 2 fine-tune epochs (chance: 0.1)
    assert result.run_dir.parent.parent == tmp_path / "outputs"


def test_a_torchvision_model_from_a_local_weights_file_is_pruned_evaluated_and_exported(tmp_path, cli_env):
    import torchvision

    script = EXAMPLES / "torchvision_model.py"
    code = [line for line in script.read_text().split('"""', 2)[2].splitlines()  # after the module docstring
            if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 15
    _jpeg_tree(tmp_path / "images", ["a", "b"], train=6, val=4, size=40)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "resnet18.pth")
    proc = subprocess.run([sys.executable, str(script), "resnet18", "resnet18.pth", "images/train", "images/val", "32",
                           "magnitude", "0.5"], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at sparsity 0.5000" in proc.stdout
    exported = next((tmp_path / "outputs").glob("*/*/export"))
    assert {p.name for p in exported.iterdir()} >= {"model.pt", "model.sparse.pt", "model.onnx"}


def test_a_timm_model_from_a_local_weights_file_is_pruned_with_timms_preprocessing(tmp_path, cli_env):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'unipts[timm]'")

    _jpeg_tree(tmp_path / "images", ["a", "b"], train=6, val=4, size=40)
    model = timm.create_model("test_resnet", num_classes=2)  # timm's own tiny network for tests
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    prunable = sum(1 for m in model.modules() if type(m) in (torch.nn.Conv2d, torch.nn.Linear))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "timm_model.py"), "test_resnet", "weights.pth",
                           "images/train", "images/val", "32", "magnitude", "0.7"], cwd=tmp_path, env=cli_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"at sparsity 0.7000 over {prunable} layers" in proc.stdout
