"""POT baseline: global magnitude's (or the reference's l2norm) allocation, then layer-wise
reconstruction with fixed masks."""

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
    assert cfg.method.name == "pot" and cfg.allocation.rule == "global"  # chosen on the validation split
    assert cfg.method.get("trainer") is None and cfg.method.bn_recalibrate
    settings = OmegaConf.to_container(cfg.method.pruner, resolve=True)
    assert settings.pop("_target_") == "unipts.methods.Pot"
    PotConfig.build(settings)  # every key is a valid setting


# --------------------------------------------------------------------------- the reference's corrections


def _channel_means(t: torch.Tensor) -> torch.Tensor:
    """Per channel (dimension 1), the mean over every other dimension."""
    return t.transpose(0, 1).reshape(t.shape[1], -1).double().mean(1)


def _output_means(model: nn.Module, batches, inputs_from: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Per channel, the mean output of every BatchNorm and of the classifier of ``model`` (a
    DigitsNet) on the calibration images. With ``inputs_from``, each of those modules' layer is fed
    the input that ``inputs_from``'s same layer gets (the layer-wise view); otherwise ``model`` runs
    on its own."""
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    pairs = [(name, name[:-1] + str(int(name[-1]) + 1)) for name in layers if name != "fc"]  # features.k -> k+1
    outs: dict[str, list] = {}
    with torch.no_grad():
        for x in batches:
            if inputs_from is None:
                captured = {}
                hooks = [model.get_submodule(n).register_forward_hook(
                    lambda m, i, o, n=n: captured.__setitem__(n, o.clone())) for _, n in pairs] + [  # ReLU in place
                    model.fc.register_forward_hook(lambda m, i, o: captured.__setitem__("fc", o))]
                model(x)
            else:
                seen = {}
                hooks = [inputs_from.get_submodule(n).register_forward_hook(
                    lambda m, i, o, n=n: seen.__setitem__(n, i[0])) for n in layers]
                inputs_from(x)
                captured = {bn: model.get_submodule(bn)(model.get_submodule(conv)(seen[conv])) for conv, bn in pairs}
                captured["fc"] = model.fc(seen["fc"])
            for h in hooks:
                h.remove()
            for n, o in captured.items():
                outs.setdefault(n, []).append(o)
    return {n: _channel_means(torch.cat(o)) for n, o in outs.items()}


@pytest.mark.parametrize("inputs", ["sparse", "dense"])
def test_bias_correction_gives_each_layer_the_dense_mean_output(dense, batches, inputs):
    """With the correction alone (no Adam step), every corrected layer's mean output per channel on
    its inputs is the dense layer's: the classifier through its bias, each convolution (no bias)
    through the BatchNorm after it; at both sparsity levels, in the network as the walk runs it."""
    dense_means = _output_means(dense, batches)
    gaps = {}
    for correct in (False, True):
        student = _student(dense)
        pot_prune_(student, dense, 0.7, batches, iterations=0, inputs=inputs, progressive=True,
                   bias_correction=correct)
        means = _output_means(student, batches, inputs_from=dense if inputs == "dense" else None)
        if inputs == "dense":  # each layer on the dense network's inputs, the BatchNorm's running mean its offset
            dense_means = _output_means(dense, batches, inputs_from=dense)
        gaps[correct] = max(float((means[n] - dense_means[n]).abs().max()) for n in dense_means)
    assert gaps[False] > 0.05  # the pruning shifts the means: without the correction the check fails
    assert gaps[True] < 1e-4


def test_bias_correction_lowers_the_layer_error_before_any_step(dense, batches):
    reference = copy.deepcopy(dense.state_dict())
    student = _student(dense, 0.7)
    plain = reconstruct_layerwise_(copy.deepcopy(student), dense, batches, iterations=0, inputs="dense")
    corrected = reconstruct_layerwise_(student, dense, batches, iterations=0, inputs="dense", bias_correction=True)
    for p, c in zip(plain, corrected):
        assert c.mse_before == pytest.approx(p.mse_before, rel=1e-5)  # measured before the correction
        assert c.mse_after < c.mse_before  # the best constant per channel removes the mean error
    # the dense network's BatchNorms are read, never written
    assert all(torch.equal(value, reference[key]) for key, value in dense.state_dict().items())


def test_bias_correction_offset_is_tuned_and_kept_in_the_batchnorm(dense, batches):
    """Adam tunes the offset of a bias-less layer like a bias; its value ends in the BatchNorm."""
    student = _student(dense, 0.7)
    reconstruct_layerwise_(student, dense, batches, inputs="dense", bias_correction=True, **FAST)
    shifted = [name for name in ("features.1", "features.4", "features.8")
               if not torch.allclose(student.get_submodule(name).running_mean, dense.get_submodule(name).running_mean)]
    assert shifted == ["features.1", "features.4", "features.8"]
    for name in shifted:  # the rest of the BatchNorm is the dense one
        assert torch.equal(student.get_submodule(name).running_var, dense.get_submodule(name).running_var)


def test_bias_correction_without_a_place_for_it_warns(caplog):
    """A bias-less convolution with no BatchNorm after it cannot hold a correction: said, not hidden."""
    dense = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    batches = [torch.randn(8, 2, 6, 6) for _ in range(2)]
    student = _student(dense, 0.5)
    with caplog.at_level(logging.WARNING, logger="unipts"):
        reconstruct_layerwise_(student, dense, batches, iterations=0, bias_correction=True)
    assert any("pot.bias_correction: 1 layer(s)" in r.getMessage() and r.getMessage().endswith(": 0")
               for r in caplog.records)


def test_batchnorm_after_finds_each_convolutions_own_batchnorm():
    from unipts.baselines.layerwise import batchnorm_after

    net = sparsify(CifarResNet(8, width=4))
    found = batchnorm_after(net)
    assert found["conv1"] == "bn1" and found["layer1.0.conv2"] == "layer1.0.bn2" and "fc" not in found
    assert len(found) == sum(1 for _ in masked_layers(net)) - 1
    assert batchnorm_after(sparsify(_Untraceable())) == {}


def test_weight_correction_by_hand():
    """Two output channels worked by hand: ``[-2, -1, 1, 2]`` keeping +-2 (std 1.5811 -> 1.4142, so
    scale sqrt(1.25), mean 0, no shift) and ``[0, 1, 2, 5]`` keeping 2 and 5 (std sqrt(3.5), the
    masked channel's sqrt(4.1875) about mean 1.75, so scale sqrt(3.5 / 4.1875) and shift 2 - 1.75 scale)."""
    from unipts.baselines.pot import correct_weight_statistics_

    layer = sparsify(nn.Sequential(nn.Linear(4, 2)))[0]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-2.0, -1.0, 1.0, 2.0], [0.0, 1.0, 2.0, 5.0]]))
        layer.mask.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]))
    correct_weight_statistics_(layer)
    s1, s2 = 1.25 ** 0.5, (3.5 / 4.1875) ** 0.5
    shift2 = 2.0 - 1.75 * s2
    expected = torch.tensor([[-2.0 * s1, -1.0, 1.0, 2.0 * s1], [0.0, 1.0, 2.0 * s2 + shift2, 5.0 * s2 + shift2]])
    assert torch.allclose(layer.weight, expected, atol=1e-6)  # pruned weights untouched (the mask hides them)


def test_pot_prune_corrects_weights_at_each_masking(dense, batches):
    from unipts.baselines.pot import correct_weight_statistics_

    reference = _student(dense, 0.6)
    for _, layer in masked_layers(reference):
        correct_weight_statistics_(layer)
    fold_masks_(reference)
    student = _student(dense)
    pot_prune_(student, dense, 0.6, batches, iterations=0, weight_correction=True)
    for (_, a), (_, b) in zip(masked_layers(student), masked_layers(reference)):
        assert torch.allclose(a.weight, b.weight, atol=1e-6)
    plain = _student(dense)
    pot_prune_(plain, dense, 0.6, batches, iterations=0)
    assert not all(torch.allclose(a.weight, b.weight) for (_, a), (_, b) in zip(masked_layers(plain), masked_layers(student)))


def test_published_settings_are_valid_settings():
    from unipts.baselines.pot import PUBLISHED

    cfg = PotConfig.build(PUBLISHED)
    assert cfg.steps_for(1024) == 1200 and cfg.bias_correction and cfg.weight_correction and cfg.inputs == "dense"


@pytest.mark.parametrize("key", ["bias_correction", "weight_correction"])
def test_a_correction_switch_must_be_a_boolean(key):
    from unipts import UniptsError
    from unipts.spec import build_method

    from .test_config import _compose
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match=rf"^pot\.{key}: 'yes' is not a boolean$"):
        PotConfig(**{key: "yes"})
    cfg = _compose(["method=pot", f"method.pruner.{key}=2"])
    with pytest.raises(UniptsError, match=rf"^method\.pruner\.{key}: 2 is not a boolean$"):
        build_method(OmegaConf.to_container(cfg.method, resolve=True))
