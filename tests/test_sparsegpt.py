"""SparseGPT: exact per-layer counts, the OBS update beats magnitude and Wanda, inputs from the
network pruned so far, settings checked, the network's mode and the dense network untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unipts.baselines import SparseGPTConfig, sparsegpt_prune_, wanda_prune_
from unipts.baselines.columns import input_columns, weight_matrices
from unipts.baselines.sparsegpt import hessian, sparsegpt_sweep
from unipts.models import CifarResNet
from unipts.sparse import masked_layers, sparsify
from unipts.sparse.pattern import violations

from .helpers.oneshot import (
    batches, correlated, correlated_images, dense, expected_counts, magnitude_prune_, single_layer_error,
    with_bn_stats, zeros_per_layer,
)  # batches, dense: the fixtures both layer-wise baselines are tested on


@pytest.mark.parametrize("allocation", ["uniform", "erk", "lamp", "global"])
@pytest.mark.parametrize("target", [0.37, 0.83])
def test_every_layer_ends_with_exactly_its_allocated_zeros(dense, batches, allocation, target):
    student = sparsify(copy.deepcopy(dense))
    # small blocks: many per layer, so the remainder is carried from block to block
    summary = sparsegpt_prune_(student, target, batches, allocation=allocation, block_size=5)
    counts = expected_counts(dense, target, allocation)
    assert zeros_per_layer(student) == {name: (k, k) for name, k in counts.items()}
    n_weights = sum(layer.weight.numel() for _, layer in masked_layers(student))
    assert summary["zeros"] == sum(counts.values()) == round(target * n_weights)
    assert [r["name"] for r in summary["layers"]] == list(counts)


def test_nm_pattern_every_group_and_ineligible_layers_dense(dense, batches):
    student = sparsify(copy.deepcopy(dense), pattern="2:4")
    sparsegpt_prune_(student, 0.5, batches, block_size=6)  # rounded up to 8: groups never straddle blocks
    layers = dict(masked_layers(student))
    assert layers["features.0"].n_zeros == 0  # 9 inputs per output: cannot carry 2:4
    assert torch.equal(layers["features.0"].weight, dense.features[0].weight)
    for name, layer in layers.items():
        if name != "features.0":
            assert violations(layer.weight, 2, 4) == 0
            assert layer.n_zeros == layer.weight.numel() // 2
            assert ((layer.mask.reshape(-1, 4) == 0).sum(1) == 2).all()


def _linear() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    return nn.Linear(64, 24), list(correlated(384, 64, seed=2).split(128))


def _conv(groups: int = 1, kernel: int = 3, channels: int = 8) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    layer = nn.Conv2d(channels, 16 if groups == 1 else channels, kernel, padding=1, groups=groups)
    return layer, list(correlated_images(24, channels, 8, seed=3).split(8))


LAYERS = {
    "linear": _linear,
    "conv": _conv,
    "depthwise": lambda: _conv(groups=8),
    "grouped": lambda: _conv(groups=2),
}


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_output_error_below_magnitude_and_wanda(kind, pattern):
    if pattern and kind == "depthwise":
        pytest.skip("a depthwise 3x3 conv has 9 inputs per output: it cannot carry 2:4 (the grouped one can)")
    layer, xs = LAYERS[kind]()
    target = 0.5 if pattern else 0.6
    errors = {name: single_layer_error(layer, prune, target, xs, pattern) for name, prune in
              {"sparsegpt": sparsegpt_prune_, "wanda": wanda_prune_, "magnitude": magnitude_prune_}.items()}
    assert errors["sparsegpt"] < errors["wanda"] and errors["sparsegpt"] < errors["magnitude"], errors


def test_nm_result_does_not_depend_on_the_block_size():
    # Blocks only batch the error propagation: an N:M group is chosen on the weights as updated by
    # every earlier column, whether those were in its block or in earlier ones.
    layer, xs = _linear()
    results = []
    for block_size in (4, 12, 128):
        student = sparsify(nn.Sequential(copy.deepcopy(layer)), pattern="2:4")
        sparsegpt_prune_(student, 0.5, xs, block_size=block_size)
        results.append(student[0])
    for other in results[1:]:
        assert torch.equal(other.mask, results[0].mask)
        assert torch.allclose(other.weight, results[0].weight, atol=1e-5)


def test_inputs_come_from_the_network_pruned_so_far():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    xs = list(correlated(96, 12, seed=4).split(32))
    student = sparsify(copy.deepcopy(dense))
    sparsegpt_prune_(student, 0.7, xs, block_size=4)
    second = student[2]
    counts = expected_counts(dense, 0.7, "uniform")

    def second_layer_after(inputs):
        weight, _ = sparsegpt_sweep(weight_matrices(dense[2]), hessian(second, inputs), counts["2"], block_size=4)
        return weight.view_as(second.weight)

    with torch.no_grad():
        from_pruned = second_layer_after([student[1](student[0](x)) for x in xs])
        from_dense = second_layer_after([dense[1](dense[0](x)) for x in xs])
    assert torch.allclose(second.weight, from_pruned, atol=1e-6)
    assert not torch.allclose(second.weight, from_dense, atol=1e-3)
    # the option: every layer's inputs from the dense network
    student = sparsify(copy.deepcopy(dense))
    sparsegpt_prune_(student, 0.7, xs, block_size=4, inputs="dense", dense=dense)
    assert torch.allclose(student[2].weight, from_dense, atol=1e-6)


def test_dead_inputs_pruned_first_without_nans():
    torch.manual_seed(0)
    layer = nn.Linear(16, 6)
    xs = correlated(64, 16, seed=5)
    xs[:, [1, 7, 12]] = 0  # never active on the calibration images
    student = sparsify(nn.Sequential(copy.deepcopy(layer)))
    sparsegpt_prune_(student, 0.25, [xs])  # 24 zeros: the 18 dead weights, then 6 more
    assert torch.isfinite(student[0].weight).all()
    assert (student[0].mask[:, [1, 7, 12]] == 0).all()
    assert student[0].n_zeros == 24


def test_input_columns_reproduce_the_convolution():
    torch.manual_seed(0)
    for conv in (nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=False),
                 nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, bias=False),
                 nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False, padding_mode="reflect")):
        x = torch.randn(3, conv.in_channels, 7, 7)
        y = conv(x)
        out = weight_matrices(conv) @ input_columns(conv, x)  # (groups, rows, batch * positions)
        out = out.view(conv.groups, -1, 3, y.shape[2] * y.shape[3]).permute(2, 0, 1, 3).reshape(y.shape)
        assert torch.allclose(out, y, atol=1e-5)


def test_graph_and_hook_engines_agree():
    dense = with_bn_stats(CifarResNet(8, width=4), (3, 8, 8))
    xs = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    states = []
    for engine in ("graph", "hooks"):
        student = sparsify(copy.deepcopy(dense))
        assert sparsegpt_prune_(student, 0.6, xs, engine=engine)["engine"] == engine
        states.append(student.state_dict())
    for key in states[0]:
        assert torch.allclose(states[0][key], states[1][key], atol=1e-5), key


def test_mode_restored_batchnorm_and_dense_untouched(dense, batches):
    reference = copy.deepcopy(dense.state_dict())
    student = sparsify(copy.deepcopy(dense)).train()
    bn_before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    sparsegpt_prune_(student, 0.5, batches)
    assert student.training and all(m.training for m in student.modules())
    for key, value in bn_before.items():  # the walk ran in eval mode: no statistics updated
        assert torch.equal(student.state_dict()[key], value), key
    for key, value in dense.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert all(p.grad is None for p in student.parameters())


def test_float32_math_under_autocast(dense, batches):
    student = sparsify(copy.deepcopy(dense))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        summary = sparsegpt_prune_(student, 0.5, batches)
    assert all(layer.weight.dtype == torch.float32 for _, layer in masked_layers(student))
    assert all(torch.isfinite(layer.weight).all() for _, layer in masked_layers(student))
    assert summary["zeros"] == sum(layer.n_zeros for _, layer in masked_layers(student))


@pytest.mark.parametrize("settings, key", [
    ({"dampening": -0.1}, "sparsegpt.dampening"),
    ({"dampening": float("nan")}, "sparsegpt.dampening"),
    ({"block_size": 0}, "sparsegpt.block_size"),
    ({"block_size": 2.5}, "sparsegpt.block_size"),
    ({"engine": "jit"}, "sparsegpt.engine"),
    ({"inputs": "teacher"}, "sparsegpt.inputs"),
    ({"inputs": "dense"}, "sparsegpt.inputs"),  # without the dense network
    ({"blocksize": 64}, "sparsegpt: unknown settings"),
])
def test_bad_settings_refused_before_any_work(dense, batches, settings, key):
    student = sparsify(copy.deepcopy(dense))
    with pytest.raises(ValueError, match=key) as info:
        sparsegpt_prune_(student, 0.5, batches, **settings)
    assert "\n" not in str(info.value) and str(info.value).startswith(key)
    assert all(layer.n_zeros == 0 for _, layer in masked_layers(student))
    assert SparseGPTConfig.build({"block_size": 64}, dampening=0.1) == SparseGPTConfig(dampening=0.1, block_size=64)
