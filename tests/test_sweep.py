"""Hydra multirun: one directory and summary per job, collected into CSV + markdown; the SLURM
launcher config composes (there is no cluster here)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from unipts.cli._entry import CONFIG_DIR

from .conftest import read_summary


def test_small_sweep_then_collect(tmp_path, cli_env):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "unipts.cli.prune", "-m", "sparsity.target=0.5,0.9", "method=magnitude,unipts",
            f"hydra.sweep.dir={sweep}", "data.pretrain.epochs=2", "finetune.epochs=1", "calib.size=64",
            "trainer.enable_progress_bar=false",
            # the search's sizes, set once for a sweep across methods: unipts searches with them,
            # magnitude keeps its own allocation rule (uniform) and ignores them
            "allocation.generations=2", "allocation.population=4", "allocation.parents=2"]
    proc = subprocess.run(args, cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        s = read_summary(job)
        seen.add((s["target_sparsity"], s["method"]))
        assert s["allocation"] == {"magnitude": "uniform", "unipts": "search"}[s["method"]]
        if s["method"] == "unipts":
            assert s["search_evaluations"] <= 2 * 4
        assert abs(s["achieved_sparsity"] - s["target_sparsity"]) < 0.001
        assert (job / s["checkpoint"]).is_file()
    assert seen == {(0.5, "magnitude"), (0.5, "unipts"), (0.9, "magnitude"), (0.9, "unipts")}

    out = subprocess.run([sys.executable, "-m", "unipts.collect", str(sweep)], capture_output=True, text=True, check=True)
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert len(rows) == 4 and {r["run_dir"] for r in rows} == {"0", "1", "2", "3"}
    table = out.stdout.strip().splitlines()
    assert table[0].startswith("| method |") and len(table) == 2 + 4


@pytest.mark.parametrize("nodes,devices", [(2, 4), (1, 2)])
def test_slurm_launcher_composes(nodes, devices):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("prune", overrides=["hydra/launcher=slurm", "trainer=ddp", f"trainer.num_nodes={nodes}",
                                          f"trainer.devices={devices}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.nodes == nodes and launcher.tasks_per_node == devices and launcher.gpus_per_node == devices
    assert cfg.trainer.strategy == "ddp" and launcher.timeout_min > 0
    assert Path(CONFIG_DIR, "hydra", "launcher", "slurm.yaml").is_file()
