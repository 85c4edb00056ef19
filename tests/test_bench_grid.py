"""benchmarks/cifar10_grid.py: a kept run whose setting no longer composes to the config it ran
with is reported stale, and only for a key its method reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from unipts.cli._entry import CONFIG_DIR

from .test_bench_scale import _load


@pytest.fixture(scope="module")
def grid():
    return _load("cifar10_grid")


def _keep(grid, kept, rid: str, overrides: list[str], **changes) -> None:
    """Write a kept summary whose config is what ``overrides`` compose today, with ``changes``
    (dotted keys) applied: the record of a run made under other defaults."""
    from .test_config import _compose

    cfg = _compose(["experiment=cifar10_resnet20", *overrides])  # Hydra's runtime set: paths resolve
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    tops = {key.split(".")[0] for key in grid.RESULT_KEYS}
    config = {top: OmegaConf.to_container(cfg[top], resolve=True) if OmegaConf.is_config(cfg[top]) else cfg[top]
              for top in tops}
    (kept / rid).mkdir(parents=True)
    (kept / rid / "summary.json").write_text(json.dumps({"config": config}))


def test_a_changed_default_makes_kept_runs_stale_only_where_the_method_reads_it(grid, tmp_path):
    unipts, pot = grid.Setting("u", ("method=unipts",)), grid.Setting("p", ("method=pot",))
    (u_id, u_overrides), (p_id, p_overrides) = unipts.runs()[0], pot.runs()[0]
    _keep(grid, tmp_path, u_id, u_overrides, **{"finetune.epochs": 30})
    _keep(grid, tmp_path, p_id, p_overrides, **{"finetune.epochs": 30, "objective.features": []})
    stale = grid.stale_runs(tmp_path, [unipts, pot])
    assert list(stale) == [u_id] and stale[u_id].startswith("finetune.epochs: ran with 30")


def test_a_run_that_matches_its_setting_is_not_stale(grid, tmp_path):
    setting = grid.Setting("erk", ("method=unipts", "allocation=erk"))
    rid, overrides = setting.runs()[0]
    _keep(grid, tmp_path, rid, overrides, **{"allocation.generations": 3})  # the search's, unread by erk
    assert grid.stale_runs(tmp_path, [setting]) == {}


def test_jobs_run_at_once_with_the_overrides_and_a_results_folder_elsewhere_leaves_benchmarks_alone(
        grid, tmp_path, monkeypatch):
    """--jobs N runs N grid runs at a time, --override reaches every run's command line, and a
    --results folder other than the committed one writes its CSV and plot there, not BENCHMARKS.md."""
    import shutil
    import subprocess
    import threading
    import time

    kept_summary = grid.KEPT / "pot" / "s0.5" / "seed0" / "summary.json"
    if not kept_summary.is_file():
        pytest.skip("needs the committed pot run")
    commands, running, most = [], [0], [0]
    lock = threading.Lock()

    def fake_run(command, cwd, stdout, stderr):
        with lock:
            commands.append(command)
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)  # long enough for a second job to start if the grid allows one
        run_dir = Path(next(c.split("=", 1)[1] for c in command if c.startswith("hydra.run.dir=")))
        (run_dir / ".hydra").mkdir(parents=True)
        shutil.copy2(kept_summary, run_dir / "summary.json")
        (run_dir / ".hydra" / "overrides.yaml").write_text("[]\n")
        with lock:
            running[0] -= 1
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(grid.subprocess, "run", fake_run)
    benchmarks = (grid.REPO / "BENCHMARKS.md").read_text()
    grid.main(["--data", str(tmp_path), "--settings", "pot", "--targets", "0.5", "--seeds", "0", "1", "--jobs", "2",
               "--override", "runtime.threads=1", "--results", str(tmp_path / "results"),
               "--out", str(tmp_path / "out")])
    assert len(commands) == 2 and most[0] == 2
    assert all("runtime.threads=1" in c for c in commands)
    assert (tmp_path / "results" / "cifar10_resnet20.csv").is_file()
    assert (grid.REPO / "BENCHMARKS.md").read_text() == benchmarks


def test_an_override_that_changes_a_result_is_refused_before_any_run(grid, tmp_path, capsys):
    assert grid.result_changing(["runtime.threads=1", "trainer.accelerator=gpu", "data.num_workers=0"]) == {}
    assert grid.result_changing(["finetune.epochs=3"]) == {"finetune.epochs=3": "finetune.epochs"}
    with pytest.raises(SystemExit) as stop:
        grid.main(["--data", str(tmp_path), "--settings", "pot", "--override", "trainer.precision=32-true",
                   "--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "--override trainer.precision=32-true changes trainer.precision" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_row_states_its_recipe_and_a_later_override_of_a_key_wins(grid):
    """A row measured with an earlier recipe lists that recipe, then what it changes: of two values
    of one key its runs get the later, whatever Hydra would make of both."""
    _, overrides = grid.Setting("x", ("method=unipts", *grid.PREVIOUS_RECIPE, "finetune.epochs=30")).runs()[0]
    assert [o for o in overrides if o.startswith("finetune.epochs=")] == ["finetune.epochs=30"]
    assert "trainer.precision=32-true" in overrides and len(overrides) == len({o.split("=")[0] for o in overrides})


def test_more_seeds_run_at_0_9_only(grid):
    setting = grid.Setting("x", ("method=unipts",), (0.5, 0.9), seeds=(0,), more_seeds=(3,))
    assert [rid for rid, _ in setting.runs()] == ["x/s0.5/seed0", "x/s0.9/seed0", "x/s0.9/seed3"]
    assert "calib.seed=3" in setting.runs()[-1][1]


def test_a_mixing_setting_without_mixing_makes_no_run_stale(grid, tmp_path):
    """gmp_full mixes nothing (finetune.mix=none): the experiment's finetune.mix_until is unread."""
    setting = grid.Setting("g", ("method=gmp_full", "finetune.mix=none"))
    rid, overrides = setting.runs()[0]
    _keep(grid, tmp_path, rid, overrides, **{"finetune.mix_until": 1.0})
    assert grid.stale_runs(tmp_path, [setting]) == {}


def test_every_committed_run_is_what_its_setting_runs_today(grid):
    """The committed results: a default changed without the rows measured before it stating the old
    value would leave runs under a setting they no longer measure (the report refuses them)."""
    assert grid.stale_runs(grid.KEPT, [*grid.SETTINGS.values(), grid.REFERENCE]) == {}
