"""Where a method's forward passes run outside the fit (POT, a search without a fine-tune, BN
re-estimation): the fit's device and precision."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from unipts.methods.placement import accelerator_device, on_accelerator
from unipts.spec import Trainer

from .conftest import FAST, read_summary, run_cli


@pytest.mark.parametrize("accelerator, devices, local_rank, expected", [
    ("gpu", 1, None, "cuda:0"),
    ("auto", -1, "1", "cuda:1"),
    ("gpu", [2, 3], "1", "cuda:3"),  # ids are taken by the process's position among them
    ("cuda", "0,2", "1", "cuda:2"),
    ("cpu", 1, None, "cpu"),  # asked for the CPU, on the CPU whatever is there
])
def test_the_fit_device_of_each_process(monkeypatch, accelerator, devices, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert accelerator_device(accelerator, devices) == torch.device(expected)


def test_no_cuda_means_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accelerator_device("auto", -1) == torch.device("cpu")


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_forward_passes_follow_the_trainer_precision(precision, dtype):
    trainer = Trainer({"accelerator": "cpu", "devices": 1, "precision": precision})
    layer = nn.Linear(4, 2)
    with on_accelerator(trainer, layer) as device:
        assert device == torch.device("cpu")
        assert layer(torch.ones(1, 4)).dtype == dtype
    assert not torch.is_autocast_enabled("cpu")
    assert layer(torch.ones(1, 4)).dtype == torch.float32


@pytest.mark.slow
def test_pot_reconstructs_in_bf16_when_the_trainer_asks(tmp_path, cli_env):
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        run_dir = tmp_path / precision
        # One Adam step moves each kept weight by about the learning rate, in its gradient's sign
        # however small the gradient: at the preset's 1e-2 the signs bfloat16 flips among tiny
        # gradients alone move the two runs apart on these 64 images; 1e-3 compares the precisions.
        run_cli("prune", run_dir, *FAST, "method=pot", "method.pruner.epochs=1", "method.pruner.progressive=false",
                "method.pruner.lr_weight=1e-3", f"trainer.precision={precision}", env=cli_env)
        runs[precision] = read_summary(run_dir)
    fp32, bf16 = runs["32-true"], runs["bf16-mixed"]
    mse = {p: [layer["mse_after"] for layer in s["pot"]["steps"][0]["layers"]] for p, s in runs.items()}
    assert mse["32-true"] != mse["bf16-mixed"]  # the reconstruction did run in another precision
    assert mse["bf16-mixed"] == pytest.approx(mse["32-true"], rel=0.25)  # and close to full precision
    assert bf16["achieved_sparsity"] == pytest.approx(0.9, abs=5e-4)
    assert abs(bf16["top1"] - fp32["top1"]) < 0.05
