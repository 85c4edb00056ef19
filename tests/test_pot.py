"""POT baseline: l2norm allocation plus layer-wise reconstruction with fixed masks."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from unipts.baselines import PotConfig, pot_prune_, reconstruct_layerwise_
from unipts.models import CifarResNet, DigitsNet
from unipts.sparse import allocate, fold_masks_, masked_layers, set_masks_, sparsify

FAST = dict(lr_weight=1e-2, lr_bias=1e-2, epochs=4, batch_size=32)


def _with_bn_stats(model: nn.Module, shape) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, then switch to eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, *shape) * 1.5 + 0.3)
    return model.eval()


@pytest.fixture
def dense() -> nn.Module:
    return _with_bn_stats(DigitsNet(width=8), (1, 8, 8))


@pytest.fixture
def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(32, 1, 8, 8, generator=gen) * 1.5 + 0.3 for _ in range(4)]


def _student(dense: nn.Module, target: float | None = None) -> nn.Module:
    student = sparsify(copy.deepcopy(dense), srste_decay=0.0)
    if target is not None:
        set_masks_(student, allocate(student, "l2norm", target))
    return student


def _output_mse(student, dense, batches) -> float:
    with torch.no_grad():
        return sum(float(torch.mean((student(x) - dense(x)) ** 2)) for x in batches) / len(batches)


def _n_weights(model) -> int:
    return sum(layer.weight.numel() for _, layer in masked_layers(model))


@pytest.mark.parametrize("inputs", ["sparse", "dense"])
def test_reconstruction_lowers_layer_and_output_mse(dense, batches, inputs):
    student = _student(dense, 0.7)
    before = _output_mse(student, dense, batches)
    records = reconstruct_layerwise_(student, dense, batches, inputs=inputs, **FAST)
    assert [r.name for r in records] == [name for name, _ in masked_layers(student)]
    assert all(r.mse_after <= r.mse_before for r in records)
    assert sum(r.mse_after for r in records) < 0.8 * sum(r.mse_before for r in records)
    assert _output_mse(student, dense, batches) < before


def test_masks_fixed_exact_sparsity_and_zero_after_fold(dense, batches):
    student = _student(dense, 0.6)
    masks = {name: layer.mask.clone() for name, layer in masked_layers(student)}
    pruned_values = {name: layer.weight[layer.mask == 0].clone() for name, layer in masked_layers(student)}
    kept_before = {name: layer.weight[layer.mask == 1].clone() for name, layer in masked_layers(student)}
    reconstruct_layerwise_(student, dense, batches, **FAST)
    for name, layer in masked_layers(student):
        assert torch.equal(layer.mask, masks[name])
        assert torch.equal(layer.weight[layer.mask == 0], pruned_values[name])  # no gradient reached them
    assert any(not torch.equal(layer.weight[layer.mask == 1], kept_before[name]) for name, layer in masked_layers(student))
    fold_masks_(student)
    zeros = sum(int((layer.weight == 0).sum()) for _, layer in masked_layers(student))
    assert zeros == round(0.6 * _n_weights(student))
    for _, layer in masked_layers(student):
        assert torch.all(layer.weight[layer.mask == 0] == 0)


@pytest.mark.parametrize("progressive", [False, True])
def test_pot_prune_reaches_exact_target(dense, batches, progressive, caplog):
    student = _student(dense)
    with caplog.at_level(logging.INFO, logger="unipts"):
        summary = pot_prune_(student, dense, 0.8, batches, progressive=progressive, intermediate_step=0.1, **FAST)
    targets = [s["target"] for s in summary["steps"]]
    assert targets == pytest.approx([0.7, 0.8] if progressive else [0.8])
    n = _n_weights(student)
    assert [s["zeros"] for s in summary["steps"]] == [round(t * n) for t in targets]
    zeros = sum(int((layer.weight == 0).sum()) for _, layer in masked_layers(student))
    masked_zeros = sum(layer.n_zeros for _, layer in masked_layers(student))
    assert zeros == masked_zeros == round(0.8 * n)
    for _, layer in masked_layers(student):
        assert torch.all(layer.weight[layer.mask == 0] == 0)
    assert any("pot: layer 1/4 features.0" in r.getMessage() for r in caplog.records)


def test_dense_model_untouched(dense, batches):
    reference = copy.deepcopy(dense.state_dict())
    student = _student(dense)
    student.train()
    pot_prune_(student, dense, 0.5, batches, progressive=True, bn_recalibrate=True, **FAST)
    for key, value in dense.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert not dense.training and student.training  # modes restored
    assert all(p.grad is None for p in student.parameters())


def test_graph_and_hook_engines_agree_on_a_residual_net():
    dense = _with_bn_stats(CifarResNet(8, width=4), (3, 8, 8))
    batches = [torch.randn(16, 3, 8, 8) for _ in range(3)]
    results = []
    for engine in ("graph", "hooks"):
        student = _student(dense, 0.6)
        records = reconstruct_layerwise_(student, dense, batches, engine=engine, **FAST)
        results.append(([(r.name, r.mse_before, r.mse_after) for r in records], student.state_dict()))
    (rec_g, state_g), (rec_h, state_h) = results
    assert [r[0] for r in rec_g] == [r[0] for r in rec_h]
    for (_, b1, a1), (_, b2, a2) in zip(rec_g, rec_h):
        assert b1 == pytest.approx(b2, rel=1e-4) and a1 == pytest.approx(a2, rel=1e-3)
    for key in state_g:
        assert torch.allclose(state_g[key], state_h[key], atol=1e-5), key


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, the hook engine can."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if h.sum() > 0:
            h = h * 2
        return self.b(h)


def test_untraceable_model_falls_back_to_hooks():
    dense = _Untraceable().eval()
    batches = [torch.randn(32, 6) for _ in range(2)]
    student = _student(dense, 0.5)
    records = reconstruct_layerwise_(student, dense, batches, **FAST)
    assert [r.name for r in records] == ["a", "b"]
    assert all(r.mse_after <= r.mse_before for r in records)
    with pytest.raises(RuntimeError, match="pot.engine=graph"):
        reconstruct_layerwise_(_student(dense, 0.5), dense, batches, engine="graph", **FAST)


def test_config_validation():
    assert PotConfig.build({"epochs": 1}, batch_size=8).steps_for(20) == 3
    assert PotConfig(iterations=7).steps_for(1000) == 7
    with pytest.raises(ValueError, match="unknown settings"):
        PotConfig.build({"lr": 1.0})
    with pytest.raises(ValueError, match="pot.inputs"):
        PotConfig(inputs="teacher")
    with pytest.raises(ValueError, match="pot.batch_size"):
        PotConfig(batch_size=0)


def test_hydra_preset_composes():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from unipts.cli._entry import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("prune", overrides=["method=pot"])
    assert cfg.method.name == "pot" and cfg.allocation.rule == "l2norm"
    assert cfg.method.get("trainer") is None and cfg.method.bn_recalibrate
    settings = OmegaConf.to_container(cfg.method.pruner, resolve=True)
    assert settings.pop("_target_") == "unipts.methods.Pot"
    PotConfig.build(settings)  # every key is a valid setting
