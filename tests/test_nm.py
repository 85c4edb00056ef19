"""N:M sparsity patterns (``sparsity.pattern=2:4``): masks, allocation, search, POT, config, CLI."""

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from unipts import UniptsError
from unipts.spec import build_prune_spec
from unipts.models.cifar_resnet import CifarResNet
from unipts.sparse import (
    allocate, fold_masks_, masked_layers, model_pattern, nm_allocation, nm_mask, parse_pattern, remask_from_magnitude_,
    semi_structured_skip_reason, set_masks_, set_pattern_, sparsify, to_semi_structured_, unsparsify,
)
from unipts.sparse.nm import describe, is_eligible, violations

from .conftest import FAST, read_summary, run_cli, tiny_net
from .test_config import _compose

PATTERNS = [(2, 4), (1, 4), (2, 8)]


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """``t`` in the pattern's layout: one row per group of m consecutive inputs of an output unit."""
    return t.reshape(t.shape[0], -1).reshape(-1, m)


def _nm_model(pattern="2:4", net=None):
    model = sparsify(net if net is not None else tiny_net(), pattern=pattern)
    set_masks_(model, nm_allocation(model))
    return model


def _assert_pattern(model, n, m):
    """Every eligible layer keeps exactly n of each group of m (the largest), every other one is dense."""
    for name, layer in masked_layers(model):
        if is_eligible(layer.weight, m):
            kept = _groups(layer.mask, m)
            assert torch.all(kept.sum(1) == n), name
            w = _groups(layer.weight.detach().abs(), m)
            smallest_kept = torch.where(kept.bool(), w, torch.inf).min(1).values
            largest_pruned = torch.where(kept.bool(), -torch.inf, w).max(1).values
            assert torch.all(smallest_kept >= largest_pruned), name
        else:
            assert torch.all(layer.mask == 1), name


# -- masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,m", PATTERNS)
@pytest.mark.parametrize("shape", [(16, 32), (8, 16, 3, 3), (12, 8, 1, 1)])
def test_nm_mask_keeps_the_n_largest_of_every_group(n, m, shape):
    w = torch.randn(shape)
    mask = nm_mask(w, n, m)
    assert mask.shape == w.shape and mask.dtype == w.dtype
    groups, kept = _groups(w.abs(), m), _groups(mask, m).bool()
    assert torch.all(kept.sum(1) == n)
    top = torch.topk(groups, n, dim=1).values.sum(1)
    assert torch.allclose(torch.where(kept, groups, 0).sum(1), top)
    assert violations(w * mask, n, m) == 0 and (n == m or violations(w, n, m) > 0)


def test_groups_run_along_each_output_units_flattened_input():
    w = torch.tensor([[[[1.0, 9.0], [8.0, 2.0]]], [[[7.0, 1.0], [1.0, 6.0]]]])  # conv (2, 1, 2, 2): 4 inputs per output
    assert nm_mask(w, 2, 4).flatten().tolist() == [0, 1, 1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="not a multiple of 4"):
        nm_mask(torch.randn(4, 3, 3, 3), 2, 4)  # 27 inputs per output


@pytest.mark.parametrize("n,m", PATTERNS)
def test_set_masks_conv_and_linear_and_ineligible_layers_stay_dense(n, m):
    model = _nm_model((n, m), CifarResNet(20))
    _assert_pattern(model, n, m)
    layers = dict(masked_layers(model))
    assert not is_eligible(layers["conv1"].weight, m)  # 3 * 3 * 3 = 27 inputs: the stem stays dense
    assert float(layers["conv1"].target_sparsity) == 0.0
    assert float(layers["fc"].target_sparsity) == pytest.approx(1 - n / m)
    info = describe(model)
    assert info["pattern"] == f"{n}:{m}" and "conv1" in info["dense_layers"]
    assert info["global_sparsity"] < 1 - n / m


def test_remask_regrows_within_the_groups_after_weights_change():
    model = _nm_model("2:4")
    with torch.no_grad():
        for _, layer in masked_layers(model):
            layer.weight.add_(torch.randn_like(layer.weight))
    churn = remask_from_magnitude_(model)
    assert churn > 0
    _assert_pattern(model, 2, 4)
    assert remask_from_magnitude_(model) == 0.0


def test_set_masks_refuses_counts_the_pattern_cannot_hold():
    model = sparsify(tiny_net(), pattern="2:4")
    counts = nm_allocation(model)
    counts["fc"] += 1
    with pytest.raises(ValueError, match="fc: sparsity.pattern=2:4 fixes"):
        set_masks_(model, counts)
    counts = nm_allocation(model)
    counts["features.0"] = 1  # ineligible: must stay dense
    with pytest.raises(ValueError, match="features.0"):
        set_masks_(model, counts)


def test_fold_keeps_the_pattern_and_refuses_a_broken_mask():
    model = _nm_model("1:4")
    fold_masks_(model)
    for _, layer in masked_layers(model):
        if is_eligible(layer.weight, 4):
            assert violations(layer.weight, 1, 4) == 0
    layer = dict(masked_layers(model))["fc"]
    layer.mask.fill_(1)
    with pytest.raises(RuntimeError, match="fc: .* pattern is 1:4"):
        fold_masks_(model)


def test_pattern_is_an_attribute_that_unsparsify_removes_and_state_dict_ignores():
    model = _nm_model("2:4")
    assert model_pattern(model) == (2, 4)
    assert not any("nm" in k.split(".")[-1] for k in model.state_dict())
    assert "pattern=2:4" in repr(model)
    unsparsify(model)
    assert not any(hasattr(m, "nm") for m in model.modules())
    plain = sparsify(tiny_net())
    assert model_pattern(plain) is None
    assert set_pattern_(plain, "1:4") == (1, 4) and model_pattern(plain) == (1, 4)


# -- allocation -------------------------------------------------------------------------------
def test_every_allocation_rule_gives_the_one_feasible_table(tmp_path):
    model = sparsify(CifarResNet(20), pattern="2:4")
    expected = nm_allocation(model, 0.5)
    table = tmp_path / "t.yaml"
    table.write_text(yaml.safe_dump({"layers": {name: 0.3 for name, _ in masked_layers(model)}}))
    for rule, options in [("uniform", {}), ("global", {}), ("erk", {}), ("lamp", {}), ("l2norm", {}),
                          ("regrow", {"delta": 0.1}), ("table", {"path": table})]:
        assert allocate(model, rule, 0.5, **options) == expected, rule
    with pytest.raises(ValueError, match=r"sparsity\.target: 0\.9 .*sparsity\.pattern=2:4.*sparsity\.target=0\.5"):
        allocate(model, "uniform", 0.9)
    assert expected["conv1"] == 0
    assert all(expected[name] == layer.weight.numel() // 2 for name, layer in masked_layers(model) if name != "conv1")


# -- search and POT ---------------------------------------------------------------------------
def test_search_is_skipped_and_says_why(tmp_path):
    from unipts.lightning import SparsitySearch
    from unipts.search import Fitness

    model = sparsify(tiny_net(), pattern="2:4")
    set_masks_(model, allocate(model, "regrow", 0.5, delta=0.05))
    images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    cb = SparsitySearch(0.5, tmp_path, generations=2, population=4, parents=2, progress=False)
    assert cb.search(model, (images, labels)) is None
    _assert_pattern(model, 2, 4)
    summary = cb.summary()
    assert summary["search_skipped"] == "sparsity.pattern=2:4 fixes every layer's sparsity"
    assert summary["search_seconds"] == 0.0 and summary["search_forward_images"] == 0 and cb.done
    assert not (tmp_path / "sparsity_table.yaml").exists()
    restored = SparsitySearch(0.5, tmp_path)
    restored.load_state_dict(cb.state_dict())
    assert restored.done and restored.summary() == summary
    with pytest.raises(ValueError, match="nothing to choose under sparsity.pattern=2:4"):
        Fitness(model, 0.5, images[:8], images[8:], labels[8:])


def test_pot_skips_the_progressive_step_under_nm():
    from unipts.baselines import pot_prune_

    dense = tiny_net().eval()
    student = sparsify(tiny_net(), pattern="2:4")
    student.load_state_dict(dense.state_dict(), strict=False)
    report = pot_prune_(student, dense, 0.5, [torch.randn(16, 1, 8, 8)], progressive=True, iterations=2,
                        allocation="l2norm")
    assert [s["target"] for s in report["steps"]] == [0.5]
    _assert_pattern(student, 2, 4)


# -- semi-structured export -------------------------------------------------------------------
def test_semi_structured_export_says_why_it_cannot_run():
    assert "2:4" in semi_structured_skip_reason(_nm_model("1:4"))
    assert "2:4" in semi_structured_skip_reason(sparsify(tiny_net()))
    model = _nm_model("2:4")
    if not torch.cuda.is_available():
        assert "CUDA" in semi_structured_skip_reason(model)
        with pytest.raises(RuntimeError, match="CUDA"):
            to_semi_structured_(model)


def test_semi_structured_export_bookkeeping(monkeypatch):
    """The export's choices, on CPU with torch's converter replaced by one with cuSPARSELt's shape rule."""
    import unipts.sparse.nm as nm

    def fake(w):
        if w.shape[0] % 16 or w.shape[1] % 16:
            raise RuntimeError(f"Error original_tensor.shape {w.shape} is not supported!\nmore")
        return w.clone()

    monkeypatch.setattr(nm, "semi_structured_skip_reason", lambda model: None)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", fake)
    nn = torch.nn
    model = _nm_model("2:4", nn.Sequential(nn.Conv2d(4, 16, 3), nn.Flatten(), nn.Linear(30, 32), nn.Linear(32, 32),
                                           nn.Linear(32, 10)))
    report = to_semi_structured_(model, device="cpu")
    assert report["converted"] == ["3"]
    assert set(report["dense"]) == {"0", "2", "4"}
    assert "convolution" in report["dense"]["0"] and "not a multiple of 4" in report["dense"]["2"]
    assert report["dense"]["4"].startswith("Error original_tensor.shape")
    assert not any(hasattr(m, "mask") for m in model.modules())  # plain layers, masks folded
    assert model[3].weight.dtype == torch.float16 and violations(model[3].weight, 2, 4) == 0


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="torch's semi-structured (2:4) sparse kernels need a CUDA GPU of compute capability >= 8.0")
def test_semi_structured_export_on_gpu():
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 128),
                        nn.ReLU(), nn.Linear(128, 10))
    model = _nm_model("2:4", net).eval()
    x = torch.randn(32, 4, 8, 8)
    with torch.no_grad():
        expected = model(x)
    report = to_semi_structured_(model)
    assert report["converted"] == ["3"]
    assert set(report["dense"]) == {"0", "5"}  # a convolution; 10 outputs is not a kernel tile
    assert type(model[3].weight).__name__.startswith("SparseSemiStructuredTensor")
    with torch.no_grad():
        out = model(x.cuda().half()).float().cpu()
    torch.testing.assert_close(out, expected, atol=5e-2, rtol=5e-2)


# -- configuration ----------------------------------------------------------------------------
def test_hydra_reads_n_m_from_the_command_line_as_a_string():
    cfg = _compose(["sparsity.pattern=2:4", "sparsity.target=0.5"])
    assert cfg.sparsity.pattern == "2:4"
    build_prune_spec(cfg)
    build_prune_spec(_compose(["sparsity.pattern=1:4", "sparsity.target=0.75", "method=magnitude"]))
    build_prune_spec(_compose(["sparsity.pattern=1:3", "sparsity.target=0.6667"]))
    assert parse_pattern("unstructured") is None and parse_pattern((2, 4)) == (2, 4)


@pytest.mark.parametrize("value,match", [
    ("4:4", r"sparsity\.pattern: 4:4 .*1 <= N < M"),
    ("0:4", r"sparsity\.pattern: 0:4"),
    ("2-4", r"sparsity\.pattern: '2-4' is not a sparsity pattern; valid: 'unstructured' or 'N:M'"),
    ("structured", r"sparsity\.pattern: 'structured'"),
    (124, r"sparsity\.pattern: 124 .*base-60"),  # what an unquoted 2:4 in a YAML file becomes
])
def test_bad_patterns_are_refused(value, match):
    cfg = _compose(["sparsity.target=0.5"])
    cfg.sparsity.pattern = value
    with pytest.raises(UniptsError, match=match):
        build_prune_spec(cfg)


def test_target_must_be_the_patterns_sparsity():
    with pytest.raises(UniptsError, match=r"sparsity\.target: 0\.9 .*sparsity\.pattern=2:4.*sparsity\.target=0\.5"):
        build_prune_spec(_compose(["sparsity.pattern=2:4"]))
    with pytest.raises(UniptsError, match=r"sparsity\.target=0\.75"):
        build_prune_spec(_compose(["sparsity.pattern=1:4", "sparsity.target=0.5"]))
    cfg = _compose(["sparsity.pattern=2:4", "sparsity.target=0.5", "method=gmp_full"])
    with pytest.raises(UniptsError, match=r"sparsity\.pattern: 2:4 cannot follow method=gmp_full"):
        build_prune_spec(cfg)


# -- end to end -------------------------------------------------------------------------------
def _check_checkpoint(run_dir, summary, n, m):
    state = torch.load(run_dir / summary["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    dense_layers = set(summary["sparsity_pattern"]["dense_layers"])
    for layer in summary["layers"]:
        w = state[f"student.{layer['name']}.weight"]
        if layer["name"] in dense_layers:
            assert layer["sparsity"] == 0.0
            assert torch.all(state[f"student.{layer['name']}.mask"] == 1)
        else:
            assert ((_groups(w, m) != 0).sum(1) <= n).all(), layer["name"]  # the saved weights themselves are N:M
            assert layer["sparsity"] >= 1 - n / m
    assert summary["achieved_sparsity"] < 1 - n / m


@pytest.mark.slow
def test_cli_unipts_2_4_skips_the_search_and_fine_tunes_within_the_pattern(tmp_path, cli_env):
    run_dir = tmp_path / "unipts"
    proc = run_cli("prune", run_dir, *FAST, "method=unipts", "sparsity.pattern=2:4", "sparsity.target=0.5", env=cli_env)
    summary = read_summary(run_dir)
    log = proc.stdout + proc.stderr
    assert "search: skipped: sparsity.pattern=2:4 fixes every layer's sparsity" in log
    assert "features.0 stays dense" in log
    assert summary["search_skipped"] == "sparsity.pattern=2:4 fixes every layer's sparsity"
    assert summary["masks"] == "dynamic" and summary["target_sparsity"] == 0.5
    assert summary["sparsity_pattern"]["pattern"] == "2:4"
    assert list(summary["sparsity_pattern"]["dense_layers"]) == ["features.0"]
    assert summary["achieved_sparsity"] == pytest.approx(summary["sparsity_pattern"]["global_sparsity"], abs=1e-3)
    assert not (run_dir / "sparsity_table.yaml").exists()
    _check_checkpoint(run_dir, summary, 2, 4)
    # resumed: the configuration gives the layers their pattern again, the checkpoint the masks (a
    # finished run is not resumed: this one is taken as killed between its last checkpoint and its summary)
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoints" / "final.ckpt").unlink()
    proc = run_cli("prune", run_dir, *FAST, "method=unipts", "sparsity.pattern=2:4", "sparsity.target=0.5",
                   "ckpt_path=last", env=cli_env)
    assert "search: skipped (sparsity.pattern=2:4" in proc.stdout + proc.stderr
    summary = read_summary(run_dir)
    assert summary["resumed_from"] and summary["search_skipped"]
    _check_checkpoint(run_dir, summary, 2, 4)


def test_cli_magnitude_1_4(tmp_path, cli_env):
    run_dir = tmp_path / "magnitude"
    run_cli("prune", run_dir, *FAST, "method=magnitude", "sparsity.pattern=1:4", "sparsity.target=0.75", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["sparsity_pattern"]["layer_sparsity"] == 0.75
    _check_checkpoint(run_dir, summary, 1, 4)
