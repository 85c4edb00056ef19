"""DDP on two CPU processes (gloo): identical masks on every rank, synced metrics, one set of
outputs written by rank 0."""

import json
import os

import pytest

from .conftest import REPO, read_summary, run_cli

DDP = ["trainer=ddp_cpu", "data.pretrain.epochs=2", "finetune.epochs=2", "calib.size=128", "data.batch_size=16",
       "dynamic.interval=2", "trainer.enable_progress_bar=false", "allocation.generations=2",
       "allocation.population=6", "allocation.parents=3"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cli_env):
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    hashes = run_dir.parent / "hashes.json"
    # the tests package first, then any source tree the suite itself runs on (a worktree's src)
    env = {**cli_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), cli_env.get("PYTHONPATH")]))}
    run_cli("prune", run_dir, *DDP, "+extra_callbacks.probe._target_=tests.helpers.mask_probe.MaskHashes",
            f"+extra_callbacks.probe.path={hashes}", "+extra_callbacks.probe.every=2", env=env)
    return run_dir, json.loads(hashes.read_text())


def test_masks_are_identical_on_every_rank(ddp_run):
    _, records = ddp_run
    tags = [r["tag"] for r in records]
    assert tags[0] == "after_search" and tags[-1] == "end" and len(tags) >= 4, tags  # several re-mask intervals
    for r in records:
        assert r["world_size"] == 2 and len(r["hashes"]) == 2
        assert r["hashes"][0] == r["hashes"][1], r
    assert records[0]["hashes"][0] != records[-1]["hashes"][0]  # the masks did move: the check is not vacuous


def test_rank_zero_alone_writes_one_run_directory(ddp_run):
    run_dir, _ = ddp_run
    names = sorted(p.name for p in run_dir.iterdir())
    assert not [n for n in names if "ddp_process" in n], names
    assert names == sorted(["calib_indices.json", "checkpoints", "csv", "prune.log", "search_fitness.png",
                            "search_layer_sparsity.png", "sparsity_table.yaml", "summary.json", ".hydra", ".unipts"]), names
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["final.ckpt", "last.ckpt"]  # the default retention
    assert len(list(run_dir.parent.rglob("summary.json"))) == 1


def test_test_metrics_are_synced_over_ranks(ddp_run, cli_env):
    """Each rank scores half of the evaluation split; the summary's top-1 is the whole split's, as a
    single process scores it (up to the one image DistributedSampler repeats to even out 359)."""
    run_dir, _ = ddp_run
    summary = read_summary(run_dir)
    eval_dir = run_dir.parent / "eval"
    run_cli("eval", eval_dir, f"checkpoint={run_dir / summary['checkpoint']}", "trainer.enable_progress_bar=false",
            env=cli_env)
    assert abs(read_summary(eval_dir)["top1"] - summary["top1"]) <= 1 / 359 + 1e-6
    assert abs(summary["achieved_sparsity"] - 0.9) < 0.0005
