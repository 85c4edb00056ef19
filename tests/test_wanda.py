"""Wanda: exact per-layer counts spread over the rows, |W|·‖X‖ beats magnitude on unequal feature
scales, inputs from the network pruned so far, no weight update, settings checked."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from unipts.baselines import WandaConfig, wanda_prune_
from unipts.baselines.wanda import feature_norms, row_balanced_mask, wanda_scores
from unipts.sparse import masked_layers, nm_mask, sparsify
from unipts.sparse.pattern import violations

from .helpers.oneshot import (
    batches, correlated, correlated_images, dense, expected_counts, magnitude_prune_, single_layer_error,
    zeros_per_layer,
)  # batches, dense: the fixtures both layer-wise baselines are tested on


@pytest.mark.parametrize("allocation", ["uniform", "erk", "lamp"])
@pytest.mark.parametrize("target", [0.37, 0.83])
def test_exact_counts_spread_over_rows(dense, batches, allocation, target):
    student = sparsify(copy.deepcopy(dense))
    wanda_prune_(student, target, batches, allocation=allocation)
    counts = expected_counts(dense, target, allocation)
    assert zeros_per_layer(student) == {name: (k, k) for name, k in counts.items()}
    for _, layer in masked_layers(student):
        per_row = (layer.mask.reshape(layer.mask.shape[0], -1) == 0).sum(1)
        assert per_row.max() - per_row.min() <= 1


def test_remainder_goes_to_rows_with_the_lowest_next_candidate():
    scores = torch.tensor([[1.0, 9.0, 9.5], [2.0, 3.0, 8.0], [0.5, 6.0, 4.0]])
    pruned = row_balanced_mask(scores, 5)  # one per row, then 2 more: rows 1 (next: 3.0) and 2 (4.0), not 0 (9.0)
    assert pruned.tolist() == [[True, False, False], [True, True, False], [True, False, True]]
    assert row_balanced_mask(scores, 0).sum() == 0 and row_balanced_mask(scores, 9).all()


def test_scores_use_each_groups_own_features():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    xs = [torch.randn(2, 4, 5, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(1, 4, 1, 1)]
    padded = nn.functional.pad(xs[0], (1, 1, 1, 1))
    for c in range(4):  # depthwise: output c sees only channel c, its 9 shifted copies
        patches = nn.functional.unfold(padded[:, c:c + 1], 3)  # (2, 9, 25)
        expected = conv.weight[c].flatten().abs() * patches.square().sum((0, 2)).sqrt()
        assert torch.allclose(wanda_scores(conv, xs)[c], expected, atol=1e-5)
    assert feature_norms(conv, xs).shape == (4, 9)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_error_below_magnitude_on_unequal_feature_scales(kind, pattern):
    torch.manual_seed(0)
    if kind == "linear":
        layer, xs = nn.Linear(32, 16), list(correlated(256, 32, seed=6, spread=2.0).split(64))
    else:
        layer, xs = nn.Conv2d(8, 16, 3, padding=1), list(correlated_images(16, 8, 8, seed=7, spread=2.0).split(8))
    target = 0.5 if pattern else 0.6
    wanda = single_layer_error(layer, wanda_prune_, target, xs, pattern)
    magnitude = single_layer_error(layer, magnitude_prune_, target, xs, pattern)
    assert wanda < 0.9 * magnitude, (wanda, magnitude)


def test_nm_masks_from_the_scores(dense, batches):
    student = sparsify(copy.deepcopy(dense), pattern="2:4")
    wanda_prune_(student, 0.5, batches)
    layers = dict(masked_layers(student))
    assert layers["features.0"].n_zeros == 0  # 9 inputs per output: left dense
    fc = layers["fc"]
    with torch.no_grad():
        inputs = [student.features(x).flatten(1) for x in batches]  # from the pruned features
    assert torch.equal(fc.mask, nm_mask(wanda_scores(dense.fc, inputs), 2, 4))
    assert violations(fc.mask, 2, 4) == 0 and fc.n_zeros == fc.weight.numel() // 2
    assert not torch.equal(fc.mask, nm_mask(dense.fc.weight, 2, 4))  # not plain magnitude


def test_inputs_come_from_the_network_pruned_so_far():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 8)).eval()
    xs = list(correlated(96, 12, seed=4, spread=1.5).split(32))
    student = sparsify(copy.deepcopy(dense))
    wanda_prune_(student, 0.8, xs)
    k = expected_counts(dense, 0.8, "uniform")["2"]

    def second_mask(inputs):
        return ~row_balanced_mask(wanda_scores(dense[2], inputs), k)

    with torch.no_grad():
        from_pruned = second_mask([student[1](student[0](x)) for x in xs])
        from_dense = second_mask([dense[1](dense[0](x)) for x in xs])
    assert torch.equal(student[2].mask.bool(), from_pruned)
    assert not torch.equal(student[2].mask.bool(), from_dense)
    student = sparsify(copy.deepcopy(dense))
    wanda_prune_(student, 0.8, xs, inputs="dense", dense=dense)  # the option: norms from the dense network
    assert torch.equal(student[2].mask.bool(), from_dense)


def test_no_weight_update_mode_restored_dense_untouched(dense, batches):
    reference = copy.deepcopy(dense.state_dict())
    student = sparsify(copy.deepcopy(dense)).train()
    wanda_prune_(student, 0.6, batches)
    assert student.training and all(m.training for m in student.modules())
    for name, layer in masked_layers(student):
        original = dense.get_submodule(name).weight
        assert torch.equal(layer.weight, original * layer.mask)  # kept weights as they were, pruned ones zero
    for key, value in dense.state_dict().items():
        assert torch.equal(value, reference[key]), key
    bn = [k for k in reference if "running" in k]
    assert all(torch.equal(student.state_dict()[k], reference[k]) for k in bn)


@pytest.mark.parametrize("settings, key", [
    ({"engine": "jit"}, "wanda.engine"),
    ({"inputs": "dense"}, "wanda.inputs"),  # without the dense network
    ({"alpha": 1.0}, "wanda: unknown settings"),
])
def test_bad_settings_refused(dense, batches, settings, key):
    student = sparsify(copy.deepcopy(dense))
    with pytest.raises(ValueError, match=key) as info:
        wanda_prune_(student, 0.5, batches, **settings)
    assert "\n" not in str(info.value) and str(info.value).startswith(key)
    assert all(layer.n_zeros == 0 for _, layer in masked_layers(student))
    assert WandaConfig.build({}, engine="hooks") == WandaConfig(engine="hooks")
