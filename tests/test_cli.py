"""End-to-end runs of the entry points as a user runs them (subprocesses, tiny settings)."""

import json
import re

import pytest
import torch

from .conftest import FAST, read_summary, run_cli

CONTRACT_KEYS = {"task", "method", "model", "data", "target_sparsity", "achieved_sparsity", "calib_size", "top1",
                 "top5", "dense_top1", "wall_s", "layers", "checkpoint"}


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, cli_env):
    run_dir = tmp_path_factory.mktemp("prune") / "run"
    proc = run_cli("prune", run_dir, *FAST, env=cli_env)
    return run_dir, proc


def test_prune_writes_a_complete_summary(pruned_run):
    run_dir, proc = pruned_run
    summary = read_summary(run_dir)
    assert CONTRACT_KEYS <= set(summary)
    assert summary["task"] == "prune" and summary["method"] == "unipts"
    assert summary["model"] == "digits_net" and summary["data"] == "digits"
    assert summary["target_sparsity"] == 0.9 and summary["calib_size"] == 64
    assert abs(summary["achieved_sparsity"] - 0.9) < 0.0005
    assert 0.0 <= summary["top1"] <= summary["top5"] <= 1.0
    # a trained dense model, scored on the same split (0.894 measured after FAST's 2 pre-training epochs),
    # and the pruned one close behind it (0.886 measured)
    assert summary["dense_top1"] > 0.8 and summary["top1"] > 0.8
    assert set(summary["wall_s"]) >= {"search", "finetune", "total"}
    assert all({"name", "numel", "sparsity"} <= set(layer) for layer in summary["layers"])
    assert (run_dir / summary["checkpoint"]).is_file()
    assert "achieved sparsity" in proc.stdout + proc.stderr


def test_saved_checkpoint_has_exact_zeros_and_masks(pruned_run):
    run_dir, _ = pruned_run
    summary = read_summary(run_dir)
    state = torch.load(run_dir / summary["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    zeros = total = 0
    for layer in summary["layers"]:
        w, mask = state[f"student.{layer['name']}.weight"], state[f"student.{layer['name']}.mask"]
        assert torch.all(w[mask == 0] == 0)  # pruned weights are zero in the file itself
        zeros += int((w == 0).sum())
        total += w.numel()
    assert zeros == round(0.9 * total)


def test_calibration_indices_and_checkpoints_are_saved(pruned_run):
    run_dir, _ = pruned_run
    indices = json.loads((run_dir / "calib_indices.json").read_text())
    assert len(indices) == 64 and len(set(indices)) == 64
    # by default only what a resume and a user need: last.ckpt and final.ckpt, not one file per epoch
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["final.ckpt", "last.ckpt"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])  # the dense model is not duplicated
    assert any(k.endswith(".mask") for k in ckpt["state_dict"])
    assert (run_dir / "csv" / "metrics.csv").is_file()


def test_eval_reproduces_the_pruned_accuracy(pruned_run, cli_env):
    run_dir, _ = pruned_run
    summary = read_summary(run_dir)
    eval_dir = run_dir.parent / "eval"
    proc = run_cli("eval", eval_dir, f"checkpoint={run_dir / summary['checkpoint']}", "trainer.enable_progress_bar=false",
                   env=cli_env)
    evaluated = read_summary(eval_dir)
    assert re.search(rf"^  top-1 +{evaluated['top1']:.4f} ", proc.stdout + proc.stderr, re.M)  # the user sees it
    assert evaluated["task"] == "eval"
    assert evaluated["top1"] == pytest.approx(summary["top1"])
    assert evaluated["achieved_sparsity"] == pytest.approx(summary["achieved_sparsity"])


def test_dense_model_is_cached_and_reused(pruned_run, cli_env, tmp_path):
    run_dir, _ = pruned_run
    again = tmp_path / "again"
    proc = run_cli("prune", again, *FAST, "method=magnitude", env=cli_env)
    assert "reusing the cached pre-trained model" in proc.stdout + proc.stderr
    assert read_summary(again)["dense_top1"] == read_summary(run_dir)["dense_top1"]
    assert read_summary(again)["masks"] == "one-shot"


def test_pretrain_writes_a_loadable_dense_checkpoint(tmp_path, cli_env):
    run_dir = tmp_path / "pre"
    run_cli("pretrain", run_dir, "data.pretrain.epochs=1", "trainer.enable_progress_bar=false", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["task"] == "pretrain" and summary["achieved_sparsity"] == 0.0
    prune_dir = tmp_path / "prune"
    run_cli("prune", prune_dir, *FAST, "method=magnitude", "allocation=global", f"dense_ckpt={run_dir / summary['checkpoint']}",
            env=cli_env)
    pruned = read_summary(prune_dir)
    assert pruned["dense_top1"] == pytest.approx(summary["top1"])
    assert abs(pruned["achieved_sparsity"] - 0.9) < 0.0005


BAD_INPUT = [
    (["sparsity.target=1.5"], "sparsity.target"),
    (["calib.size=0"], "calib.size"),
    (["calib.size=100000"], "calib.size"),
    (["dense_ckpt=/nonexistent/dense.pt"], "dense_ckpt"),
    (["data=cifar10", "model=resnet20", "data.root=/nonexistent/cifar10"], "data.root"),
    (["model.name=resnet1000"], "model.name"),
    (["eval_split=train"], "eval_split"),
    (["eval_split=val", "validation.size=100000"], "validation.size"),
    (["method=gmp_full", "method.trainer.end=0.0"], "method.trainer.end"),
    (["method=gmp_full", "allocation=regrow"], "allocation.rule"),
]


@pytest.mark.parametrize("overrides,key", BAD_INPUT, ids=[k for _, k in BAD_INPUT])
def test_bad_input_fails_with_one_clear_line(overrides, key, tmp_path, cli_env):
    run_dir = tmp_path / "bad"
    proc = run_cli("prune", run_dir, *FAST, *overrides, env=cli_env, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "summary.json").exists()


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path, cli_env):
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    run_dir = tmp_path / "bad"
    proc = run_cli("prune", run_dir, *FAST, f"dense_ckpt={wrong}", env=cli_env, check=False)
    assert proc.returncode != 0
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "dense_ckpt" in error[0] and "missing keys" in error[0] and "conv.weight" in error[0]
    assert not (run_dir / "summary.json").exists()


def test_pot_baseline_end_to_end(tmp_path, cli_env):
    run_dir = tmp_path / "pot"
    run_cli("prune", run_dir, *FAST, "method=pot", "method.pruner.epochs=1", "method.pruner.progressive=false", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["method"] == "pot" and summary["allocation"] == "global" and summary["masks"] == "one-shot"
    assert abs(summary["achieved_sparsity"] - 0.9) < 0.0005
    assert len(summary["pot"]["steps"]) == 1 and summary["pot"]["steps"][0]["layers"]


def test_checkpoint_retention_is_configurable(tmp_path, cli_env):
    run_dir = tmp_path / "ckpts"
    run_cli("prune", run_dir, *FAST, "allocation=uniform",
            "finetune.epochs=3", "checkpoint.monitor=val/top1", env=cli_env)
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["best.ckpt", "final.ckpt", "last.ckpt"]
    every = tmp_path / "every"
    run_cli("prune", every, *FAST, "allocation=uniform",
            "finetune.epochs=3", "checkpoint.save_top_k=-1", env=cli_env)
    kept = sorted(p.name for p in (every / "checkpoints").iterdir())
    assert kept == ["epoch000.ckpt", "epoch001.ckpt", "epoch002.ckpt", "final.ckpt", "last.ckpt"]


def test_a_table_that_misses_the_target_is_refused_before_any_work(tmp_path, cli_env):
    table = tmp_path / "table.yaml"
    table.write_text("layers: {features.0: 0.5, features.3: 0.5, features.7: 0.5, fc: 0.5}\n")
    run_dir = tmp_path / "bad"
    env = {**cli_env, "UNIPTS_CACHE_DIR": str(tmp_path / "empty-cache")}  # nothing cached: pre-training would show
    proc = run_cli("prune", run_dir, *FAST, "allocation=table", f"allocation.path={table}", "sparsity.target=0.9",
                   env=env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "allocation.path" in errors[0] and "0.5000" in errors[0]
    assert "dense model" not in proc.stdout + proc.stderr  # neither pre-trained nor evaluated first
    assert not (tmp_path / "empty-cache").exists() and not (run_dir / "summary.json").exists()


def test_finetune_logs_readable_figures_and_validates_first_and_last_epoch(tmp_path, cli_env):
    import csv

    run_dir = tmp_path / "figures"
    run_cli("prune", run_dir, *FAST, "allocation=uniform", "finetune.epochs=3", "trainer.check_val_every_n_epoch=10",
            env=cli_env)
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    validated = sorted({int(r["epoch"]) for r in rows if r.get("val/top1")})
    assert validated == [0, 2]  # first and last, although the interval (10) is longer than the run
    kl = [float(r["train/kl"]) for r in rows if r.get("train/kl")]
    agreement = [float(r["train/agreement"]) for r in rows if r.get("train/agreement")]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(kl) == len(agreement) == len(losses) > 0
    assert all(k >= 0 for k in kl) and all(0 <= a <= 1 for a in agreement)
    assert max(losses) < 0  # the base-decayed objective the figures above make readable
