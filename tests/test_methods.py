"""Methods are classes the ``method`` config node instantiates: a user's own is one class and one
YAML file (README, "Adding a method"), picked with ``method=<name>``."""

import os
from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf
import torch

from unipts import UniptsError
from unipts.methods import Distill, GradualMagnitude, Job, Pot, Pruner, SparseGPT, Wanda
from unipts.spec import build_method, build_prune_spec
from unipts.sparse import masked_layers

from .conftest import FAST, REPO, read_summary, run_cli
from .test_config import _compose


@dataclass
class RandomMasks(Pruner):
    """One-shot: each layer keeps a random subset of its weights, as many as the allocation keeps
    (the floor a real method has to beat)."""

    seed: int = 0

    def prune_(self, job: Job) -> None:
        counts = self.allocator.counts(job.student, job.target)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for name, layer in masked_layers(job.student):
                keep = torch.ones(layer.weight.numel())
                keep[torch.randperm(layer.weight.numel(), generator=generator)[:counts[name]]] = 0
                layer.mask.copy_(keep.view_as(layer.weight))
                layer.target_sparsity.fill_(counts[name] / layer.weight.numel())

    def summary(self) -> dict:
        return {"mask_seed": self.seed}


METHOD_YAML = """\
defaults:
  - trainer: null
  - override /allocation@_global_.allocation: uniform

_target_: unipts.methods.Method
name: random_masks
bn_recalibrate: true
pruner:
  _target_: tests.test_methods.RandomMasks
  seed: 3
"""


def test_a_method_of_ones_own_runs_end_to_end_from_its_yaml_file(tmp_path, cli_env):
    conf = tmp_path / "conf"
    (conf / "method").mkdir(parents=True)
    (conf / "method" / "random_masks.yaml").write_text(METHOD_YAML)
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([str(REPO), cli_env.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, f"hydra.searchpath=[file://{conf}]", "method=random_masks", env=env)
    summary = read_summary(run_dir)
    assert summary["method"] == "random_masks" and summary["mask_seed"] == 3
    assert summary["allocation"] == "uniform" and summary["masks"] == "one-shot" and summary["objective"] is None
    assert abs(summary["achieved_sparsity"] - 0.9) < 0.0005
    # random masks at 90% lose far more than the dense model's accuracy
    assert summary["top1"] < summary["dense_top1"] - 0.3


def _node(cfg):
    return OmegaConf.to_container(cfg.method, resolve=True)


def test_the_method_node_alone_selects_the_class():
    cfg = _compose(["method=magnitude", "method.name=random_masks",
                    f"method.pruner={{_target_:{__name__}.RandomMasks,seed:5}}"])
    method = build_method(_node(cfg))
    assert isinstance(method.pruner, RandomMasks) and method.pruner.seed == 5 and method.name == "random_masks"
    assert isinstance(build_method(_node(_compose(["method=pot"]))).pruner, Pot)
    assert isinstance(build_method(_node(_compose(["method=gmp_full"]))).trainer, GradualMagnitude)


@pytest.mark.parametrize("overrides,line", [
    (["method=pot", "method.pruner.batch_size=0"], r"^method\.pruner\.batch_size: 0 is below the minimum 1$"),
    (["method=pot", "+method.pruner.bogus=1"], r"^method\.pruner: unknown settings \['bogus'\]"),
    (["method=gmp_full", "method.trainer.start=0.9", "method.trainer.end=0.5"],
     r"^method\.trainer\.end: 0\.5 must be after"),
    (["method=gmp_full", "method.trainer.teacher=kd"], r"^method\.trainer\.teacher: 'kd' is not a boolean; valid: true"),
    (["+method.bogus=1"], r"^method: .*bogus"),
    (["method._target_=collections.OrderedDict"], r"^method\._target_: collections\.OrderedDict is a OrderedDict"),
    (["method._target_=no.such.Method"], r"^method\._target_: cannot make 'no\.such\.Method'"),
])
def test_a_refused_method_option_names_its_key(overrides, line):
    with pytest.raises(UniptsError, match=line):
        build_method(_node(_compose(overrides)))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_layerwise_baselines_run_on_the_embedded_default(method, tmp_path, cli_env):
    """method=sparsegpt / wanda: one-shot at the exact target, their time in the summary. (Their
    layer errors against magnitude's are tested on the engine: tests/test_sparsegpt.py.)"""
    run_dir = tmp_path / method
    run_cli("prune", run_dir, *FAST, f"method={method}", "calib.size=128", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["method"] == method and summary["masks"] == "one-shot" and summary["objective"] is None
    # their presets' allocations, chosen on ResNet-20's validation split
    assert summary["allocation"] == {"sparsegpt": "global", "wanda": "erk"}[method] and summary[method]["seconds"] > 0
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=5e-4)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "pot"])
def test_a_one_shot_pruner_refuses_an_allocation_decided_during_the_fit(method):
    with pytest.raises(UniptsError, match=rf"^allocation\.rule: search decides .* method={method} prunes"):
        build_prune_spec(_compose([f"method={method}", "allocation=search"]))


def test_a_layerwise_pruner_names_its_bad_setting_under_method_pruner():
    with pytest.raises(UniptsError, match=r"^method\.pruner\.block_size: 0 is below the minimum 1$"):
        build_method(_node(_compose(["method=sparsegpt", "method.pruner.block_size=0"])))


def test_a_one_shot_start_then_unipts_fine_tune_is_a_composition_of_parts(tmp_path, cli_env):
    """method=sparsegpt method/trainer=distill: SparseGPT's masks and weights, then the distillation
    with dynamic masks, with no code of its own."""
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, "method=sparsegpt", "method/trainer=distill", env=cli_env)
    summary = read_summary(run_dir)
    assert (summary["method"], summary["objective"], summary["masks"]) == ("sparsegpt", "dkl", "dynamic")
    assert summary["sparsegpt"]["seconds"] > 0 and summary["achieved_sparsity"] == pytest.approx(0.9, abs=5e-4)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # it trained


@pytest.mark.parametrize("pruner,cls", [("sparsegpt", SparseGPT), ("wanda", Wanda), ("pot", Pot)])
def test_a_pruner_group_starts_unipts_fine_tune_from_a_one_shot_method(pruner, cls):
    """method/pruner=<name>: the one-shot method's masks and weights as UniPTS's starting point
    (its settings as in method=<name>); the search decides during the fit, so it is refused."""
    spec = build_prune_spec(_compose(["method=unipts_erk", f"method/pruner={pruner}"]))
    alone = build_prune_spec(_compose([f"method={pruner}"]))
    assert isinstance(spec.method.pruner, cls) and isinstance(spec.method.trainer, Distill)
    assert spec.method.pruner.settings == alone.method.pruner.settings and spec.method.name == "unipts"
    assert spec.method.pruner.allocator is spec.allocation and spec.allocation.rule == "erk"
    with pytest.raises(UniptsError, match=rf"^allocation\.rule: search decides .* method=unipts prunes"):
        build_prune_spec(_compose(["method=unipts", f"method/pruner={pruner}"]))
