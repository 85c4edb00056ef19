import pytest
import torch
import torchvision
import yaml

from unipts.models.cifar_resnet import CifarResNet
from unipts.sparse import allocate, layer_sparsities, masked_layers, regrow_decode, set_masks_, sparsify
from unipts.sparse.allocation import lamp_scores, layer_numels, round_to_total, total_zeros

from .conftest import tiny_net

RULES = ["uniform", "global", "erk", "lamp", "l2norm", "regrow"]
TARGETS = [0.0, 0.5, 0.7, 0.9, 0.95, 0.99]


def _models():
    return {
        "digits": sparsify(tiny_net()),
        "resnet20": sparsify(CifarResNet(20)),
    }


MODELS = _models()


def _check_exact(model, counts, target):
    numels = layer_numels(model)
    assert set(counts) == set(numels)
    assert all(0 <= counts[k] <= numels[k] for k in counts)
    assert sum(counts.values()) == round(target * sum(numels.values()))


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("target", TARGETS)
def test_every_rule_hits_the_exact_global_target(model_name, rule, target):
    model = MODELS[model_name]
    counts = allocate(model, rule, target)
    _check_exact(model, counts, target)
    set_masks_(model, counts)
    zeros = sum(s.zeros for s in layer_sparsities(model))
    assert zeros == round(target * sum(layer_numels(model).values()))


@pytest.mark.parametrize("rule", RULES)
def test_exact_on_mobilenet_v2_with_depthwise_convs(rule):
    model = sparsify(torchvision.models.mobilenet_v2(weights=None, num_classes=10))
    names = [n for n, _ in masked_layers(model)]
    assert "features.0.0" in names and "classifier.1" in names  # first conv and classifier pruned too
    _check_exact(model, allocate(model, rule, 0.9), 0.9)


def test_exclusions_stay_dense_and_are_not_counted():
    model = sparsify(tiny_net(), exclude=["fc", "features.0"])
    names = {n for n, _ in masked_layers(model)}
    assert "fc" not in names and "features.0" not in names
    _check_exact(model, allocate(model, "global", 0.8), 0.8)


def test_uniform_is_uniform_and_global_follows_magnitudes():
    model = MODELS["resnet20"]
    counts = allocate(model, "uniform", 0.5)
    for name, n in layer_numels(model).items():
        assert abs(counts[name] - 0.5 * n) <= 1
    # Global magnitude: no kept weight is smaller than a pruned one.
    set_masks_(model, allocate(model, "global", 0.6))
    kept = torch.cat([l.weight[l.mask.bool()].abs().flatten() for _, l in masked_layers(model)])
    pruned = torch.cat([l.weight[~l.mask.bool()].abs().flatten() for _, l in masked_layers(model)])
    assert kept.min() >= pruned.max()


def test_erk_gives_small_layers_lower_sparsity():
    model = MODELS["resnet20"]
    counts = allocate(model, "erk", 0.9)
    numels = layer_numels(model)
    assert counts["conv1"] / numels["conv1"] < counts["layer3.2.conv2"] / numels["layer3.2.conv2"]


def test_lamp_score_matches_definition():
    w = torch.tensor([3.0, -1.0, 2.0, 0.5])
    sq = w**2
    expected = torch.tensor([9 / 9, 1 / (1 + 4 + 9), 4 / (4 + 9), 0.25 / (0.25 + 1 + 4 + 9)])
    assert torch.allclose(lamp_scores(w).float(), expected)
    assert sq.argmax() == lamp_scores(w).argmax()


@pytest.mark.parametrize("target", [0.5, 0.9, 0.97])
def test_regrow_decode_exact_for_random_genes(target):
    numels = layer_numels(MODELS["resnet20"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        genes = torch.randn(len(numels), generator=gen) * 3
        counts = regrow_decode(numels, target, 0.05, genes)
        assert sum(counts.values()) == total_zeros(numels, target)
        assert all(0 <= counts[k] <= numels[k] for k in numels)


def test_regrow_all_equal_genes_regrow_equal_absolute_counts():
    numels = {"small": 1000, "big": 10_000}
    counts = regrow_decode(numels, 0.5, 0.05)
    # P_e = 0.55; delta * N = 550 weights regrown, 275 in each layer.
    assert abs((550 - counts["small"]) - 275) <= 1 and abs((5500 - counts["big"]) - 275) <= 1


def test_released_clip_overshoots_and_corrected_decode_does_not():
    numels = {"tiny": 10, "big": 100_000}
    clipped = regrow_decode(numels, 0.5, 0.05, clip_overshoot=True)
    exact = regrow_decode(numels, 0.5, 0.05)
    n = sum(numels.values())
    assert clipped["tiny"] == 0 and exact["tiny"] == 0
    assert sum(clipped.values()) / n > 0.5 + 1e-5  # the released code's overshoot
    assert sum(exact.values()) == round(0.5 * n)


def test_round_to_total_respects_bounds():
    counts = round_to_total({"a": 2.6, "b": 7.7, "c": -3.0}, {"a": 3, "b": 8, "c": 5}, 11)
    # c is clipped to 0 and a, b to their caps: the only way to 11 within the bounds
    assert counts == {"a": 3, "b": 8, "c": 0}
    # within the bounds, the two largest fractional parts (b's .7, c's .7) get the 2 units the floors leave
    assert round_to_total({"a": 2.6, "b": 7.7, "c": 0.7}, {"a": 3, "b": 8, "c": 5}, 11) == {"a": 2, "b": 8, "c": 1}


def test_table_round_trip(tmp_path):
    model = MODELS["resnet20"]
    counts = allocate(model, "erk", 0.8)
    numels = layer_numels(model)
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump({"layers": {k: counts[k] / numels[k] for k in counts}}))
    assert allocate(model, "table", 0.8, path=path) == counts
    with pytest.raises(ValueError, match="sparsity.target"):
        allocate(model, "table", 0.5, path=path)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"nope": 0.5}))
    with pytest.raises(ValueError, match="missing layers"):
        allocate(model, "table", 0.8, path=tmp_path / "bad.yaml")


def test_unknown_rule_and_bad_target():
    with pytest.raises(ValueError, match="valid"):
        allocate(MODELS["digits"], "nonsense", 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        allocate(MODELS["digits"], "uniform", 1.5)
