"""The models people have: torchvision and timm networks by name, attention projections pruned
(``nn.MultiheadAttention`` masked as a whole), weights read around their masks refused, and the
export of such networks."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from unipts import UniptsError
from unipts.export import export_network, fold_state_dict, prunable_weight_keys
from unipts.models import architecture, build_model, load_weights, read_state_dict
from unipts.sparse import (
    MaskedLinear, MaskedMultiheadAttention, MaskedOutProjection, allocate, exclude_patterns, fold_masks_,
    layer_sparsities, masked_layers, masks_at_target, remask_from_magnitude_, set_masks_, sparsify,
    unmaskable_layers, unmasked_weight_reads, unsparsify, zero_counts,
)
from unipts.sparse.allocation import layer_numels, total_zeros

from .conftest import read_summary, run_cli

timm = pytest.importorskip("timm")


def tiny_vit(num_classes: int = 3) -> nn.Module:
    """torchvision's ViT (nn.MultiheadAttention in every block): 2 blocks of width 16, 32 px images."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=num_classes)
    nn.init.normal_(net.heads.head.weight)  # torchvision starts it at zero: every output would be 0
    return net


def tiny_timm_vit(num_classes: int = 3) -> nn.Module:
    """timm's ViT (plain nn.Linear qkv and proj), 2 blocks, 32 px images."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, img_size=32, patch_size=8, depth=2)


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


ATTENTION = "encoder.layers.encoder_layer_0.self_attention"


def _zeroed_like(dense: nn.Module, masked: nn.Module) -> nn.Module:
    """``dense`` with each masked layer's pruned weights set to zero: what the masked network must compute."""
    reference = copy.deepcopy(dense)
    with torch.no_grad():
        for name, layer in masked_layers(masked):
            module = reference.get_submodule(name)
            weight = module.in_proj_weight if isinstance(module, nn.MultiheadAttention) else module.weight
            weight.mul_(layer.mask)
    return reference


# -- attention: what torch does, and what unipts does about it -------------------------------------
def test_torch_attention_reads_its_out_proj_weight_around_the_layer():
    """The danger: nn.MultiheadAttention never calls out_proj's forward, so a mask on it (a masked
    Linear in its place) is ignored; the probe names it."""
    net = tiny_vit().eval()
    out_proj = net.get_submodule(f"{ATTENTION}.out_proj")
    out_proj.__class__ = MaskedLinear  # what masking every Linear by class would do
    out_proj._init_masking(0.0)
    x = images()
    with torch.no_grad():
        before = net(x)
        out_proj.mask.zero_()
        assert torch.equal(net(x), before)  # the mask changed nothing
    found = unmasked_weight_reads(net, x)
    assert list(found) == [f"{ATTENTION}.out_proj"]
    assert found[f"{ATTENTION}.out_proj"] == "_native_multi_head_attention"  # torch's fused inference kernel


def test_attention_is_masked_as_a_whole_and_keeps_its_state_dict_keys():
    dense = tiny_vit()
    keys = set(dense.state_dict())
    net = sparsify(copy.deepcopy(dense))
    attention = net.get_submodule(ATTENTION)
    assert type(attention) is MaskedMultiheadAttention and type(attention.out_proj) is MaskedOutProjection
    names = [n for n, _ in masked_layers(net)]
    assert ATTENTION in names and f"{ATTENTION}.out_proj" in names
    assert attention.weight is attention.in_proj_weight
    state = net.state_dict()
    assert set(state) - keys == {f"{n}.{b}" for n in names for b in ("mask", "target_sparsity")}
    load_weights(net, {**state, **dense.state_dict()}, "dense.pt")  # a dense file still loads into it


@pytest.mark.parametrize("training", [False, True])
def test_masked_attention_computes_with_the_masked_weights(training):
    dense = tiny_vit()
    net = sparsify(copy.deepcopy(dense))
    x = images()
    with torch.no_grad():
        before = net.train(training)(x)
    set_masks_(net, allocate(net, "uniform", 0.6))
    reference = _zeroed_like(dense, net).train(training)  # dropout is 0: train mode is deterministic
    with torch.no_grad():  # both on the same path (in eval: torch's fused inference kernel)
        after, expected = net(x), reference(x)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, expected, atol=1e-6)
    # only the attention's masks: still applied, in the fused inference path and in the reference one
    for name, layer in masked_layers(net):
        if not name.startswith(ATTENTION):
            layer.mask.fill_(1)
    with torch.no_grad():
        assert torch.allclose(net(x), _zeroed_like(dense, net).train(training)(x), atol=1e-6)


def test_gradients_reach_every_attention_weight_straight_through():
    net = sparsify(tiny_vit(), srste_decay=0.0)
    set_masks_(net, allocate(net, "uniform", 0.5))
    net.train()(images()).square().sum().backward()
    attention = net.get_submodule(ATTENTION)
    for weight in (attention.in_proj_weight, attention.out_proj.weight):
        assert isinstance(weight, nn.Parameter) and weight.grad is not None
        assert weight.grad[attention.mask == 0 if weight is attention.in_proj_weight
                           else attention.out_proj.mask == 0].abs().sum() > 0  # pruned weights learn too


@pytest.mark.parametrize("rule", ["uniform", "global", "erk", "lamp"])
def test_attention_counts_in_the_allocation_and_the_global_sparsity(rule):
    net = sparsify(tiny_vit())
    counts = allocate(net, rule, 0.8)
    set_masks_(net, counts)
    assert sum(counts.values()) == total_zeros(layer_numels(net), 0.8) and masks_at_target(net)
    assert layer_numels(net)[ATTENTION] == 3 * 16 * 16
    stats = {s.name: s for s in layer_sparsities(net)}
    assert stats[ATTENTION].zeros == counts[ATTENTION] and stats[f"{ATTENTION}.out_proj"].zeros == counts[f"{ATTENTION}.out_proj"]


def test_dynamic_remask_fold_and_unsparsify_keep_attention_outputs():
    net = sparsify(tiny_vit())
    set_masks_(net, allocate(net, "uniform", 0.7))
    counts = zero_counts(net)
    attention = net.get_submodule(ATTENTION)
    with torch.no_grad():
        pruned = (attention.mask == 0).nonzero()[0].tolist()
        attention.in_proj_weight[tuple(pruned)] = 50.0  # a pruned weight overtakes the kept ones
    assert remask_from_magnitude_(net) > 0 and zero_counts(net) == counts
    assert attention.mask[tuple(pruned)] == 1  # it regrew
    x = images()
    net.eval()
    with torch.no_grad():
        before = net(x)
        fold_masks_(net)
        assert torch.all(attention.in_proj_weight[attention.mask == 0] == 0)
        plain = unsparsify(net)
        assert type(plain.get_submodule(ATTENTION)) is nn.MultiheadAttention
        assert type(plain.get_submodule(f"{ATTENTION}.out_proj")) is nn.modules.linear.NonDynamicallyQuantizableLinear
        assert torch.allclose(plain(x), before, atol=1e-6)
    assert sum(s.zeros for s in layer_sparsities(plain)) == sum(counts.values())


def test_folded_state_dict_loads_into_the_plain_network_and_exports(tmp_path):
    dense = tiny_vit()
    net = sparsify(copy.deepcopy(dense))
    set_masks_(net, allocate(net, "erk", 0.75))
    state = fold_state_dict(net.state_dict())
    assert not any(k.endswith((".mask", ".target_sparsity")) for k in state)
    plain = copy.deepcopy(dense)
    plain.load_state_dict(state)  # strict
    keys = prunable_weight_keys(plain)
    assert f"{ATTENTION}.in_proj_weight" in keys and f"{ATTENTION}.out_proj.weight" in keys
    x = images()
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), net.eval()(x), atol=1e-6)
    report = export_network(plain, tmp_path, x, keys, reference=net)
    assert report["folded_matches_masked"] and report["onnx_matches_torch"] and report["onnx_weights_identical"]
    assert report["achieved_sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert torch.backends.mha.get_fastpath_enabled()  # the export turned the fused path off only for itself


def test_search_allocates_attention_layers_too():
    from unipts.search import search_allocation

    net = sparsify(tiny_vit())
    x, y = images(32), torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(0))
    result = search_allocation(net, 0.8, x, y, population=4, generations=2, parents=2, batch_size=16)
    assert ATTENTION in result.counts and zero_counts(net) == result.counts
    assert sum(result.counts.values()) == total_zeros(layer_numels(net), 0.8)


@pytest.mark.parametrize("exclude,message", [
    ([ATTENTION], f"{ATTENTION} (nn.MultiheadAttention) kept dense but not its out_proj"),
    (["*self_attention"], "keep both dense: ['encoder.layers.encoder_layer_*.self_attention*']"),
])
def test_an_attention_kept_dense_keeps_its_out_proj_dense_too(exclude, message):
    with pytest.raises(ValueError) as info:
        sparsify(tiny_vit(), exclude=exclude)
    assert message in str(info.value)
    net = sparsify(tiny_vit(), exclude=["*self_attention*"])
    assert not any("self_attention" in n for n, _ in masked_layers(net))
    net = sparsify(tiny_vit(), exclude=["*out_proj"])  # the other way round is fine: in_proj masked alone
    assert type(net.get_submodule(ATTENTION)) is MaskedMultiheadAttention
    x = images()
    set_masks_(net, allocate(net, "uniform", 0.5))
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), _zeroed_like(tiny_vit(), net).eval()(x), atol=1e-6)


def test_attention_with_separate_qkv_weights_is_refused_by_name():
    net = nn.Sequential()
    net.add_module("cross", nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    net.add_module("fc", nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"^cross \(nn.MultiheadAttention\) has separate q/k/v weights.*'cross\*'"):
        sparsify(net)
    assert [n for n, _ in masked_layers(sparsify(net, exclude=["cross*"]))] == ["fc"]


# -- the probe: weights read around their masks -----------------------------------------------------
class ReadsItsChildsWeight(nn.Module):
    """As torchvision's Swin attention and timm's BEiT do: F.linear on a child Linear's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(F.linear(x, self.qkv.weight, self.qkv.bias).relu())


def test_probe_names_weights_read_around_their_masks_and_nothing_else():
    net = sparsify(ReadsItsChildsWeight())
    assert unmasked_weight_reads(net, torch.randn(2, 8)) == {"qkv": "t"}  # F.linear's transpose of it
    assert net.training  # its mode is restored
    assert unmasked_weight_reads(sparsify(tiny_vit()), images(1)) == {}  # masked attention
    assert unmasked_weight_reads(sparsify(tiny_timm_vit()), images(1)) == {}  # plain Linear qkv/proj
    beit = timm.create_model("beit_base_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=1, embed_dim=16,
                             num_heads=2)
    assert list(unmasked_weight_reads(sparsify(beit), images(1))) == ["blocks.0.attn.qkv"]
    assert exclude_patterns(["blocks.0.attn.qkv", "blocks.11.attn.qkv", "encoder_layer_3.x", "conv1"]) == [
        "blocks.*.attn.qkv", "encoder_layer_*.x", "conv1"]


def test_probe_catches_a_fused_inference_path():
    """nn.TransformerEncoderLayer hands every weight to one fused kernel in inference."""
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    net = sparsify(nn.Sequential(layer, nn.Linear(16, 2)))
    found = unmasked_weight_reads(net, torch.randn(2, 5, 16))
    assert set(found) == {"0.self_attn", "0.self_attn.out_proj", "0.linear1", "0.linear2"}
    assert set(found.values()) == {"_transformer_encoder_layer_fwd"}


def test_layerwise_methods_refuse_attention_by_name():
    from unipts.baselines.layerwise import check_walkable

    with pytest.raises(ValueError, match=r"^method: encoder\.layers\.encoder_layer_0\.self_attention and 3 more are "
                                         r"nn\.MultiheadAttention projections.*model\.exclude='\[encoder\.layers\."
                                         r"encoder_layer_\*\.self_attention,"):
        check_walkable(sparsify(tiny_vit()), "method", "model.exclude")
    check_walkable(sparsify(tiny_timm_vit()))  # timm's plain Linear projections are walked like any other


def test_conv_and_linear_subclasses_with_their_own_forward_are_named():
    net = timm.create_model("resnetv2_50x1_bit", num_classes=3)  # StdConv2d standardises its weight itself
    skipped = unmaskable_layers(sparsify(net))
    assert skipped and set(skipped.values()) == {"StdConv2d"}


# -- the factories ---------------------------------------------------------------------------------
def test_torchvision_names_build_without_weights_and_presets_are_the_same_network():
    net = build_model({"library": "torchvision", "name": "mobilenet_v3_small", "exclude": []}, 5, 3)
    assert net.classifier[-1].out_features == 5
    preset = build_model({"name": "resnet18"}, 4, 3)
    named = build_model({"library": "torchvision", "name": "resnet18"}, 4, 3)
    assert list(preset.state_dict()) == list(named.state_dict())
    assert architecture({"name": "resnet18"}) == architecture({"library": "torchvision", "name": "resnet18"})
    assert architecture({"library": "timm", "name": "resnet18"}) != architecture({"name": "resnet18"})
    options = build_model({"library": "torchvision", "name": "mobilenet_v3_small", "dropout": 0.5}, 3, 3)
    assert options.classifier[2].p == 0.5  # the other keys are the builder's arguments


@pytest.mark.parametrize("cfg,in_channels,message", [
    ({"name": "resnet_nope"}, 3, r"^model\.name: 'resnet_nope' is not a torchvision classification model; list "
                                 r"them with: python -c .*list_models\(module=torchvision\.models\)"),
    ({"name": "fasterrcnn_resnet50_fpn"}, 3, r"is not a torchvision classification model"),
    ({"name": "???"}, 3, r"^model\.name: required with model=torchvision"),
    ({"name": "resnet18"}, 1, r"^model: torchvision's resnet18 takes 3 input channels, the data has 1$"),
    ({"name": "resnet18", "weights": "DEFAULT"}, 3, r"^model\.weights: unipts .* never downloads; .*dense_ckpt=PATH"),
    ({"name": "resnet18", "widht": 2}, 3, r"^model: torchvision's resnet18 refused its arguments: .*widht"),
])
def test_torchvision_refusals_are_one_line(cfg, in_channels, message):
    with pytest.raises(UniptsError, match=message) as info:
        build_model({"library": "torchvision", **cfg}, 3, in_channels)
    assert "\n" not in str(info.value)


def test_timm_names_build_without_weights_and_adapt_the_stem():
    net = build_model({"library": "timm", "name": "resnet18"}, 4, 1)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 4
    for cfg, message in [({"name": "nope_net"}, r"^model\.name: 'nope_net' is not a timm model; list them with: "
                                               r"python -c 'import timm; print\(timm\.list_models\(\)\)'"),
                         ({"name": "resnet18", "pretrained": True}, r"^model\.pretrained: unipts .* dense_ckpt=PATH"),
                         ({"name": "model.library"}, r"is not a timm model")]:
        with pytest.raises(UniptsError, match=message):
            build_model({"library": "timm", **cfg}, 4, 3)
    with pytest.raises(UniptsError, match=r"^model\.library: unknown library 'hub'; valid: \['timm', 'torchvision'\]"):
        build_model({"library": "hub", "name": "resnet18"}, 4, 3)


def test_without_timm_the_line_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(UniptsError, match=r"^model=timm needs timm, which is not installed: pip install 'unipts\[timm\]'$"):
        build_model({"library": "timm", "name": "resnet18"}, 4, 3)


def test_the_spec_refuses_a_bad_library_model_before_any_work():
    from unipts.spec.sections import Model

    assert Model.read({"library": "timm", "name": "resnet18", "exclude": []}).name == "resnet18"
    with pytest.raises(UniptsError, match=r"^model\.name: 'nope' is not a torchvision"):
        Model.read({"library": "torchvision", "name": "nope"})
    with pytest.raises(UniptsError, match=r"^model\.library: unknown library"):
        Model.read({"library": "keras", "name": "resnet18"})


@pytest.mark.parametrize("library,name", [("timm", "vit_tiny_patch16_224"), ("torchvision", "mobilenet_v3_small")])
def test_a_saved_state_dict_loads_through_dense_ckpt(library, name, tmp_path):
    options = {"img_size": 32, "depth": 2} if library == "timm" else {}
    if library == "timm":
        saved = timm.create_model(name, num_classes=3, **options).state_dict()
    else:
        import torchvision

        saved = getattr(torchvision.models, name)(num_classes=3).state_dict()
    path = tmp_path / "weights.pth"
    torch.save(saved, path)
    net = build_model({"library": library, "name": name, **options}, 3, 3)
    load_weights(net, read_state_dict(path), path)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.slow
@pytest.mark.parametrize("library,name", [("timm", "resnet18"), ("timm", "efficientnet_b0"),
                                          ("timm", "vit_tiny_patch16_224"), ("torchvision", "convnext_tiny")])
def test_zoo_networks_reach_the_exact_target_and_export_to_matching_onnx(library, name, tmp_path):
    options = {"img_size": 32} if name.startswith("vit") else {}
    torch.manual_seed(0)
    dense = build_model({"library": library, "name": name, **options}, 10, 3)
    net = sparsify(copy.deepcopy(dense))
    x = images(2)
    assert unmasked_weight_reads(net, x) == {}
    counts = allocate(net, "erk", 0.8)
    set_masks_(net, counts)
    assert masks_at_target(net) and sum(counts.values()) == total_zeros(layer_numels(net), 0.8)
    plain = copy.deepcopy(dense)
    plain.load_state_dict(fold_state_dict(net.state_dict()))
    report = export_network(plain, tmp_path, x, prunable_weight_keys(plain), reference=net)
    assert report["zero_weights"] == sum(counts.values())
    assert report["folded_matches_masked"] and report["onnx_matches_torch"] and report["onnx_weights_identical"]


# -- export: the example input's size -------------------------------------------------------------
@pytest.mark.parametrize("overrides,meta,model,size", [
    ([], {"data": "imagefolder", "data_config": {"name": "imagefolder", "image_size": 48}}, {}, 48),
    (["data=imagefolder", "data.image_size=64"], {"data": "imagefolder",
                                                   "data_config": {"name": "imagefolder", "image_size": 48}}, {}, 64),
    (["input_size=40"], {"data": "imagefolder", "data_config": {"name": "imagefolder", "image_size": 48}}, {}, 40),
    ([], {"data": "cifar10", "data_config": {"name": "cifar10"}}, {}, 32),
    ([], None, {"img_size": 96}, 96),
])
def test_export_input_size_comes_from_the_runs_settings(overrides, meta, model, size):
    from unipts.cli.export import _input_shape

    assert _input_shape(_export_cfg(*overrides), 3, (meta or {}).get("data"), meta, model) == (3, size, size)


def test_export_refuses_an_unknown_input_size_in_one_line():
    from unipts.cli.export import _input_shape

    meta = {"data": "mine", "data_config": {"name": "mine", "_target_": "my.data"}}
    with pytest.raises(UniptsError, match=r"^input_size: unknown for data=mine .*; give input_size=<height"):
        _input_shape(_export_cfg(), 3, "mine", meta)
    with pytest.raises(UniptsError, match=r"^input_size: unknown for data=imagefolder"):  # its size is not recorded
        _input_shape(_export_cfg(), 3, "imagefolder", {"data": "imagefolder"})


def _export_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    from unipts import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("export", overrides=["checkpoint=x", *overrides])


# -- end to end ------------------------------------------------------------------------------------
def _image_tree(root, size: int = 32, train: int = 8, val: int = 4):
    """Three classes of solid-colour PNGs with pixel noise, ``train/<class>`` and ``val/<class>``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, colour in zip("abc", [(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _folder_run(tmp_path, weights: dict) -> list[str]:
    ckpt = tmp_path / "dense.pth"
    torch.save(weights, ckpt)
    root = _image_tree(tmp_path / "images")
    return ["data=imagefolder", f"data.root={root}", "data.image_size=32", "data.resize=32", "data.num_workers=0",
            "data.batch_size=4", "calib.size=8", "trainer.enable_progress_bar=false", f"dense_ckpt={ckpt}"]


def _prune_and_export(tmp_path, cli_env, *overrides) -> tuple[dict, dict]:
    prune_dir, export_dir = tmp_path / "prune", tmp_path / "export"
    run_cli("prune", prune_dir, *overrides, env=cli_env)
    summary = read_summary(prune_dir)
    run_cli("export", export_dir, f"checkpoint={prune_dir / summary['checkpoint']}", env=cli_env)
    return summary, json.loads((export_dir / "export.json").read_text())


def _exported_as_run(summary: dict, report: dict, target: float) -> None:
    assert summary["achieved_sparsity"] == pytest.approx(target, abs=1e-3)
    assert report["achieved_sparsity"] == pytest.approx(summary["achieved_sparsity"], abs=1e-9)
    assert report["input_shape"] == [3, 32, 32]  # from the run's data settings, not a 224 px default
    assert report["folded_matches_masked"] and report["compressed_roundtrip_exact"]
    assert report["onnx_matches_torch"] and report["onnx_weights_identical"]


@pytest.mark.slow
def test_torchvision_model_by_name_prunes_and_exports(tmp_path, cli_env):
    import torchvision

    run = _folder_run(tmp_path, torchvision.models.mobilenet_v3_small(num_classes=3).state_dict())
    summary, report = _prune_and_export(tmp_path, cli_env, "model=torchvision", "model.name=mobilenet_v3_small",
                                        "method=magnitude", "sparsity.target=0.7", *run)
    assert summary["model"] == "mobilenet_v3_small" and summary["config"]["model"]["library"] == "torchvision"
    _exported_as_run(summary, report, 0.7)
    assert report["model_config"]["name"] == "mobilenet_v3_small"


@pytest.mark.slow
def test_attention_network_finetunes_with_dynamic_masks_and_exports(tmp_path, cli_env):
    """torchvision's ViT class through model=custom: the fine-tune with dynamic masks, then export."""
    run = _folder_run(tmp_path, tiny_vit().state_dict())
    vit = ["model=custom", "model._target_=torchvision.models.vision_transformer.VisionTransformer",
           "model.num_classes=3", "+model.image_size=32", "+model.patch_size=8", "+model.num_layers=2",
           "+model.num_heads=2", "+model.hidden_dim=16", "+model.mlp_dim=32"]
    summary, report = _prune_and_export(tmp_path, cli_env, *vit, "method=unipts_erk", "finetune.epochs=2",
                                        "dynamic.interval=1", "sparsity.target=0.8", *run)
    layers = {layer["name"]: layer for layer in summary["layers"]}
    assert layers[ATTENTION]["numel"] == 3 * 16 * 16 and layers[ATTENTION]["sparsity"] > 0
    _exported_as_run(summary, report, 0.8)


@pytest.mark.slow
def test_timm_model_by_name_prunes_and_exports(tmp_path, cli_env):
    run = _folder_run(tmp_path, tiny_timm_vit().state_dict())
    summary, report = _prune_and_export(tmp_path, cli_env, "model=timm", "model.name=vit_tiny_patch16_224",
                                        "+model.img_size=32", "+model.patch_size=8", "+model.depth=2",
                                        "method=sparsegpt", "sparsity.target=0.6", *run)
    assert summary["model"] == "vit_tiny_patch16_224"
    _exported_as_run(summary, report, 0.6)


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    (["model=torchvision", "model.name=resnet_nope"], "error: model.name: 'resnet_nope' is not a torchvision "
                                                      "classification model; list them with: python -c"),
    (["model=timm", "model.name=beit_base_patch16_224", "+model.img_size=8", "+model.patch_size=4", "+model.depth=1",
      "+model.embed_dim=16", "+model.num_heads=2"],
     "error: model: the network reads the weights of blocks.0.attn.qkv (operator t) itself, not through the "
     "layer: their masks would be ignored; keep them dense with model.exclude='[blocks.*.attn.qkv]'"),
])
def test_cli_refuses_bad_models_in_one_line_before_any_work(overrides, message, tmp_path, cli_env):
    proc = run_cli("prune", tmp_path / "run", *overrides, env=cli_env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith(message), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- the prune command's checks, in-process ---------------------------------------------------------
def _prune_spec(exclude=(), name="vit"):
    from types import SimpleNamespace

    return SimpleNamespace(model=SimpleNamespace(exclude=tuple(exclude), name=name),
                           data=SimpleNamespace(name="imagefolder"), sparsity=SimpleNamespace(pattern="unstructured"))


def _splits(size: int = 32):
    from types import SimpleNamespace

    return SimpleNamespace(train_plain=[(images(1, size)[0], 0)])


def test_prune_refuses_weights_read_around_their_masks_naming_the_way_out():
    from unipts.pipeline.inputs import _check_masks_reach_forward

    beit = timm.create_model("beit_base_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=2, embed_dim=16,
                             num_heads=2)
    spec = _prune_spec(exclude=["head"])
    with pytest.raises(UniptsError) as info:
        _check_masks_reach_forward(spec, sparsify(beit, exclude=["head"]), _splits())
    assert str(info.value) == ("model: the network reads the weights of blocks.0.attn.qkv (operator t), "
                               "blocks.1.attn.qkv (operator t) itself, not through the layer: their masks would be "
                               "ignored; keep them dense with model.exclude='[head,blocks.*.attn.qkv]'")
    _check_masks_reach_forward(spec, sparsify(tiny_vit()), _splits())  # masked attention: nothing to refuse
    with pytest.raises(UniptsError, match=r"^model: vit cannot run on data=imagefolder's \(3, 48, 48\) images "
                                          r"\(AssertionError: Wrong image height!"):
        _check_masks_reach_forward(spec, sparsify(tiny_vit()), _splits(48))


def test_prune_maps_attention_exclusions_and_layerwise_methods_to_one_line():
    from unipts.pipeline.inputs import _masked_network
    from unipts.methods.pruners import SparseGPT, Wanda

    with pytest.raises(UniptsError, match=r"^model\.exclude: encoder\.layers\.encoder_layer_0\.self_attention "
                                          r"\(nn\.MultiheadAttention\) kept dense but not its out_proj"):
        _masked_network(_prune_spec(exclude=[ATTENTION]), tiny_vit())
    net = _masked_network(_prune_spec(), tiny_vit())
    for pruner in (SparseGPT(), Wanda()):
        with pytest.raises(UniptsError, match=r"^method: .* are nn\.MultiheadAttention projections.*model\.exclude="):
            pruner.check_network(net)
    SparseGPT().check_network(_masked_network(_prune_spec(exclude=["*self_attention*"]), tiny_vit()))
