import io

import torch
from torch import nn

from unipts.models.cifar_resnet import CifarResNet
from unipts.sparse import (
    MaskedConv2d, MaskedLinear, allocate, fold_masks_, layer_sparsities, masked_layers, remask_from_magnitude_,
    set_masks_, sparsify, unsparsify, zero_counts,
)

from .conftest import tiny_net


def _pruned(target=0.8, model=None):
    model = sparsify(model or tiny_net())
    set_masks_(model, allocate(model, "uniform", target))
    return model


def test_sparsify_swaps_classes_and_keeps_weights():
    dense = tiny_net()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    model = sparsify(dense)
    assert isinstance(model.features[0], MaskedConv2d) and isinstance(model.fc, MaskedLinear)
    state = model.state_dict()
    assert all(torch.equal(before[k], state[k]) for k in before)
    assert {k for k in state if k not in before} == {f"{n}.{b}" for n, _ in masked_layers(model) for b in ("mask", "target_sparsity")}


def test_pruned_weights_contribute_nothing_in_eval_mode():
    model = _pruned().eval()
    x = torch.randn(4, 1, 8, 8)
    reference = tiny_net()
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if "mask" not in k and "target_sparsity" not in k})
    with torch.no_grad():
        for name, layer in masked_layers(model):
            reference.get_submodule(name).weight.mul_(layer.mask)
        assert torch.allclose(model(x), reference.eval()(x), atol=1e-6)


def test_straight_through_gradient_with_srste_decay():
    layer = sparsify(nn.Sequential(nn.Linear(4, 3, bias=False)), srste_decay=0.5)[0]
    with torch.no_grad():
        layer.weight.copy_(torch.arange(12.0).view(3, 4) - 5)
        layer.mask.copy_((torch.arange(12) % 2).view(3, 4).float())
    x = torch.randn(2, 4)
    layer(x).sum().backward()
    upstream = x.sum(0).expand(3, 4)  # d(sum(xW^T))/dW, identical for pruned and kept weights
    expected = upstream + 0.5 * (1 - layer.mask) * layer.weight.detach()
    assert torch.allclose(layer.weight.grad, expected)


def test_masks_and_sparsities_survive_a_save_load_round_trip():
    model = _pruned(0.9, sparsify(CifarResNet(20)))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = sparsify(CifarResNet(20))
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert zero_counts(fresh) == zero_counts(model)
    for (_, a), (_, b) in zip(masked_layers(fresh), masked_layers(model)):
        assert torch.equal(a.mask, b.mask) and torch.equal(a.target_sparsity, b.target_sparsity)


def test_fold_and_unsparsify_keep_outputs_and_zero_the_weights():
    model = _pruned(0.7).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        before = model(x)
    fold_masks_(model)
    for _, layer in masked_layers(model):
        assert torch.all(layer.weight[layer.mask == 0] == 0)
    plain = unsparsify(model)
    assert not list(masked_layers(plain)) and type(plain.fc) is nn.Linear
    assert "fc.mask" not in plain.state_dict()
    with torch.no_grad():
        assert torch.allclose(plain(x), before, atol=1e-6)
    assert abs(sum(s.zeros for s in layer_sparsities(plain)) / sum(s.numel for s in layer_sparsities(plain)) - 0.7) < 1e-4


def test_remask_keeps_counts_and_reports_churn():
    model = _pruned(0.8)
    counts = zero_counts(model)
    assert remask_from_magnitude_(model) == 0.0  # masks already follow the magnitudes
    with torch.no_grad():
        layer = model.fc
        pruned = (layer.mask == 0).nonzero()[:3]
        for r, c in pruned.tolist():
            layer.weight[r, c] = 100.0  # pruned weights overtake kept ones: they must regrow
    churn = remask_from_magnitude_(model)
    assert churn > 0
    assert zero_counts(model) == counts
    assert all(layer.mask[r, c] == 1 for r, c in pruned.tolist())
    assert sum(s.zeros for s in layer_sparsities(model)) == sum(counts.values())
