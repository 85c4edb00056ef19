"""benchmarks/cifar10_grid.py and its grid files (benchmarks/grid_file.py): a grid file is read and
checked before any run, and a kept run whose setting no longer composes to the config it ran with is
reported stale, and only for a key its method reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from .test_bench_scale import _load

EXPERIMENT = "cifar10_resnet20"


@pytest.fixture(scope="module")
def grid():
    return _load("cifar10_grid")


def _keep(grid, kept, rid: str, overrides: list[str], **changes) -> None:
    """Write a kept summary whose config is what ``overrides`` compose today, with ``changes``
    (dotted keys) applied: the record of a run made under other defaults."""
    from .test_config import _compose, _plain

    cfg = _compose([f"experiment={EXPERIMENT}", *overrides])  # Hydra's runtime set: paths resolve
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    config = _plain(cfg, {key.split(".")[0] for key in grid.RESULT_KEYS})
    (kept / rid).mkdir(parents=True)
    (kept / rid / "summary.json").write_text(json.dumps({"config": config}))


def test_a_changed_default_makes_kept_runs_stale_only_where_the_method_reads_it(grid, tmp_path):
    unipts, pot = grid.Setting("u", ("method=unipts",)), grid.Setting("p", ("method=pot",))
    (u_id, u_overrides), (p_id, p_overrides) = unipts.runs()[0], pot.runs()[0]
    _keep(grid, tmp_path, u_id, u_overrides, **{"finetune.epochs": 30})
    _keep(grid, tmp_path, p_id, p_overrides, **{"finetune.epochs": 30, "objective.features": []})
    stale = grid.stale_runs(tmp_path, [unipts, pot], EXPERIMENT)
    assert list(stale) == [u_id] and stale[u_id].startswith("finetune.epochs: ran with 30")


def test_a_run_that_matches_its_setting_is_not_stale(grid, tmp_path):
    setting = grid.Setting("erk", ("method=unipts", "allocation=erk"))
    rid, overrides = setting.runs()[0]
    _keep(grid, tmp_path, rid, overrides, **{"allocation.generations": 3})  # the search's, unread by erk
    assert grid.stale_runs(tmp_path, [setting], EXPERIMENT) == {}


def test_jobs_run_at_once_with_the_overrides_and_a_results_folder_elsewhere_leaves_benchmarks_alone(
        grid, tmp_path, monkeypatch):
    """--jobs N runs N grid runs at a time, --override reaches every run's command line, and a
    --results folder other than the committed one writes its CSV and plot there, not BENCHMARKS.md."""
    import shutil
    import subprocess
    import threading
    import time

    # a committed run's record stands in for each run's output
    kept_summary = grid.RESULTS / "cifar10_resnet20" / "magnitude-erk" / "s0.5" / "seed0" / "summary.json"
    assert kept_summary.is_file()
    commands, running, most = [], [0], [0]
    lock = threading.Lock()

    real_run = subprocess.run

    def fake_run(command, *args, **kwargs):
        # the patch reaches every caller of subprocess.run: matplotlib lists the fonts (fc-list) the
        # first time a plot is drawn on a machine, and that call must still run
        if not any(str(c).startswith("hydra.run.dir=") for c in command):
            return real_run(command, *args, **kwargs)
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
    grid.main(["--data", str(tmp_path), "--settings", "magnitude-erk", "--targets", "0.5", "--seeds", "0", "1", "--jobs", "2",
               "--override", "runtime.threads=1", "--results", str(tmp_path / "results"),
               "--out", str(tmp_path / "out")])
    assert len(commands) == 2 and most[0] == 2
    assert all("runtime.threads=1" in c for c in commands)
    assert (tmp_path / "results" / "cifar10_resnet20.csv").is_file()
    assert (grid.REPO / "BENCHMARKS.md").read_text() == benchmarks


@pytest.mark.parametrize("left", ["checkpoint", "nothing"])
def test_an_interrupted_run_continues_from_its_checkpoint_else_starts_afresh(grid, tmp_path, monkeypatch, left):
    """A run stopped mid-fit (a session's end) resumes with ckpt_path=last from the epoch it wrote;
    one stopped before its first checkpoint is run again from an empty directory."""
    import subprocess

    out, kept = tmp_path / "out", tmp_path / "kept"
    run_dir = out / "gmp" / "s0.9" / "seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "stray.txt").write_text("from the interrupted attempt")
    if left == "checkpoint":
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"epoch 3")
    seen = {}

    def fake_run(command, cwd, stdout, stderr):
        seen["command"], seen["kept_files"] = command, (run_dir / "stray.txt").exists()
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text("{}")
        (run_dir / ".hydra" / "overrides.yaml").write_text("[]\n")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(grid.subprocess, "run", fake_run)
    grid.run_one(EXPERIMENT, "gmp/s0.9/seed0", ["method=gmp_full"], str(tmp_path), out, kept)
    resumed = left == "checkpoint"
    assert ("ckpt_path=last" in seen["command"]) == resumed and seen["kept_files"] == resumed
    assert (kept / "gmp" / "s0.9" / "seed0" / "summary.json").is_file()


def _agg(setting: str, target: float, top1: float, split: str = "test") -> dict:
    """One aggregated grid row (three seeds, a spread of 0.1 points), as comparisons() reads it."""
    return {"setting": setting, "target_sparsity": target, "n": 3, "top1_mean": top1, "top1_std": 0.001,
            "eval_split": split}


def test_unipts_is_compared_with_the_best_one_shot_row_of_any_name(grid):
    """A tuned variant (sparsegpt-sparse-inputs-no-bn) counts as a baseline like its method's preset;
    rows of other families (nm-magnitude-2:4, ablations, validation rows) do not."""
    aggs = [_agg("unipts", 0.5, 0.88), _agg("pot", 0.5, 0.867), _agg("sparsegpt-sparse-inputs-no-bn", 0.5, 0.8705),
            _agg("nm-magnitude-2:4", 0.5, 0.9), _agg("ablation-erk", 0.5, 0.95),
            _agg("tune-sparsegpt-no-bn", 0.5, 0.95, "val")]
    real = grid.load_grid(grid.DEFAULT_GRID, grid.RESULTS)
    first = grid.comparisons(aggs, real).splitlines()[0]
    assert "best baseline sparsegpt-sparse-inputs-no-bn 0.8705" in first and "+0.95 points" in first


def test_an_ablation_is_compared_with_its_recipe_at_every_sparsity_both_were_measured_at(grid):
    """ablation-search against unipts at 0.5 and 0.9, where both have test rows; not at 0.7, where
    the ablation has none, and not against a validation row."""
    aggs = [_agg("unipts", t, 0.87) for t in (0.5, 0.7, 0.9)]
    aggs += [_agg("ablation-search", 0.5, 0.865), _agg("ablation-search", 0.9, 0.875),
             _agg("ablation-search", 0.7, 0.9, "val")]
    real = grid.load_grid(grid.DEFAULT_GRID, grid.RESULTS)
    lines = [line for line in grid.comparisons(aggs, real).splitlines() if "ablation-search" in line]
    assert lines == ["- 0.5, ablation-search: 0.8650 ± 0.0010, -0.50 points against the default recipe (<)",
                     "- 0.9, ablation-search: 0.8750 ± 0.0010, +0.50 points against the default recipe (>)"]


def test_an_override_that_changes_a_result_is_refused_before_any_run(grid, tmp_path, capsys):
    executing = ["runtime.threads=1", "trainer.accelerator=gpu", "data.num_workers=0"]
    assert grid.result_changing(executing, EXPERIMENT) == {}
    assert grid.result_changing(["finetune.epochs=3"], EXPERIMENT) == {"finetune.epochs=3": "finetune.epochs"}
    with pytest.raises(SystemExit) as stop:
        grid.main(["--data", str(tmp_path), "--settings", "pot", "--override", "trainer.precision=32-true",
                   "--results", str(tmp_path / "results"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "--override trainer.precision=32-true changes trainer.precision" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_mixing_setting_without_mixing_makes_no_run_stale(grid, tmp_path):
    """gmp_full mixes nothing (finetune.mix=none): the experiment's finetune.mix_until is unread."""
    setting = grid.Setting("g", ("method=gmp_full", "finetune.mix=none"))
    rid, overrides = setting.runs()[0]
    _keep(grid, tmp_path, rid, overrides, **{"finetune.mix_until": 1.0})
    assert grid.stale_runs(tmp_path, [setting], EXPERIMENT) == {}


@pytest.mark.slow
def test_every_committed_run_is_what_its_setting_runs_today(grid):
    """The committed results: a default changed without the rows measured before it stating the old
    value would leave runs under a setting they no longer measure (the report refuses them)."""
    real = grid.load_grid(grid.DEFAULT_GRID, grid.RESULTS)
    assert grid.stale_runs(grid.RESULTS / real.results, list(real.settings.values()), real.experiment) == {}


# A small grid with one of each: a group inside a group, a setting given as a mapping and one as a
# list, an ablation against another setting, a reference, a family around `_self_`, `${results}`.
TINY = """\
experiment: cifar10_resnet20
title: Tiny
results: tiny
seeds: [0, 1]
targets: [0.5, 0.9]
target: 0.9
reference: long
groups:
  old: [trainer.precision=32-true, finetune.epochs=100]
  older: [method=unipts, old]
settings:
  main:
    overrides: [method=unipts_erk]
    targets: [0.5, 0.9]
    more_seeds: [3]
  ablation: {overrides: [older, finetune.epochs=30], against: main}
  long: [method=gmp_full]
families:
  tune:
    prefix: tune-
    seeds: [0]
    overrides: [older, _self_, eval_split=val]
    settings:
      table: ["allocation.path=${results}/main/s0.9/seed0/sparsity_table.yaml"]
      kd: [objective=kd]
"""


def _tiny(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_a_grid_file_composes_groups_families_and_defaults_in_place(grid, tmp_path):
    tiny = grid.load_grid(_tiny(tmp_path), tmp_path / "results")
    assert (tiny.name, tiny.experiment, tiny.results, tiny.targets, tiny.reference) == (
        "tiny", "cifar10_resnet20", "tiny", (0.5, 0.9), "long")
    assert list(tiny.settings) == ["main", "ablation", "long", "tune-table", "tune-kd"]
    assert tiny.default_settings() == ["main", "ablation", "tune-table", "tune-kd"]  # the reference only when named
    ablation, kd = tiny.settings["ablation"], tiny.settings["tune-kd"]
    old = ("method=unipts", "trainer.precision=32-true", "finetune.epochs=100")
    assert ablation.overrides == (*old, "finetune.epochs=30")
    assert (ablation.targets, ablation.seeds, ablation.against) == ((0.9,), (0, 1), "main")  # the grid's defaults
    assert kd.overrides == (*old, "objective=kd", "eval_split=val") and kd.seeds == (0,)
    table = tiny.settings["tune-table"].overrides[len(old)]
    assert table == f"allocation.path={tmp_path / 'results' / 'tiny'}/main/s0.9/seed0/sparsity_table.yaml"


def test_a_row_states_its_recipe_and_a_later_override_of_a_key_wins(grid, tmp_path):
    """A row measured with an earlier recipe lists that recipe, then what it changes: of two values
    of one key its runs get the later, whatever Hydra would make of both."""
    _, overrides = grid.load_grid(_tiny(tmp_path), tmp_path).settings["ablation"].runs()[0]
    assert [o for o in overrides if o.startswith("finetune.epochs=")] == ["finetune.epochs=30"]
    assert "trainer.precision=32-true" in overrides and len(overrides) == len({o.split("=")[0] for o in overrides})


def test_more_seeds_run_at_the_grids_target_only(grid, tmp_path):
    main = grid.load_grid(_tiny(tmp_path), tmp_path).settings["main"]
    assert [rid for rid, _ in main.runs()] == ["main/s0.5/seed0", "main/s0.5/seed1", "main/s0.9/seed0",
                                               "main/s0.9/seed1", "main/s0.9/seed3"]
    assert "calib.seed=3" in main.runs()[-1][1]


@pytest.mark.parametrize("old,new,key,problem", [
    ("title: Tiny\n", "title: Tiny\nseed: 3\n", "seed", "unknown key"),
    ("experiment: cifar10_resnet20\n", "", "experiment", "missing"),
    ("more_seeds: [3]", "more_seed: [3]", "settings.main.more_seed", "unknown key"),
    ("prefix: tune-", "prefix: tune-\n    target: 0.5", "families.tune.target", "unknown key"),
    ("  long: [method=gmp_full]\n", "  long: [method=gmp_full]\n  long: [method=pot]\n", "long", "defined twice"),
    ("  long: [method=gmp_full]\n", "  long: [method=gmp_full]\n  tune-kd: [method=pot]\n",
     "families.tune.settings.kd", "the setting 'tune-kd' is defined twice (first at settings.tune-kd)"),
    ("[older, finetune.epochs=30]", "[oldest, finetune.epochs=30]", "settings.ablation.overrides",
     "'oldest' is neither an override"),
    ("old: [trainer.precision=32-true, finetune.epochs=100]", "old: [trainer.precision=32-true, older]",
     "groups.old", "includes itself (old -> older -> old)"),
    ("against: main", "against: mian", "settings.ablation.against", "'mian' is not a setting of this grid"),
    ("reference: long", "reference: longer", "reference", "'longer' is not a setting of this grid"),
    ("more_seeds: [3]", "more_seeds: [3]\n    pattern: 2:4", "settings.main.pattern", "124 is a number: quote"),
    ("seeds: [0]", "seeds: 0", "families.tune.seeds", "expected a list of integers"),
    ("target: 0.9", "target: 90", "target", "expected a sparsity between 0 and 1"),
])
def test_a_grid_file_is_refused_in_one_line_naming_the_file_and_key(grid, tmp_path, old, new, key, problem):
    assert old in TINY
    path = _tiny(tmp_path, TINY.replace(old, new, 1))
    with pytest.raises(grid.GridError) as refused:
        grid.load_grid(path, tmp_path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(str(path))
    assert f": {key}: " in message and problem in message


def test_the_committed_grid_loads_every_setting(grid):
    """137 settings, the reference, 7 long tuning rows and the distilled yardstick: the 402 runs
    `--list` shows; the reference's 3, the tuning rows' 9 and the distilled yardstick's 3 only when named."""
    real = grid.load_grid(grid.DEFAULT_GRID, grid.RESULTS)
    assert (real.experiment, real.results, real.reference) == ("cifar10_resnet20", "cifar10_resnet20", "gmp_full")
    assert len(real.settings) == 146 and len(real.default_settings()) == 137
    assert sum(len(real.settings[name].runs()) for name in real.default_settings()) == 402
    assert len(real.settings["gmp_full"].runs()) == len(real.settings["gmp_full-kd"].runs()) == 3
    named_only = [name for name, s in real.settings.items() if s.named_only]
    assert len(named_only) == 8 and all(name.startswith(("tune-gmp-", "tune4-")) for name in named_only if name != "gmp_full-kd")


@pytest.mark.parametrize("args,problem", [
    (["--grid", "no-such-grid"], "no such grid file"),
    (["--settings", "no-such-setting"], "--settings no-such-setting: not a setting of"),
])
def test_an_unknown_grid_or_setting_is_refused_before_any_run(grid, tmp_path, capsys, args, problem):
    with pytest.raises(SystemExit) as stop:
        grid.main([*args, "--list", "--results", str(tmp_path)])
    assert stop.value.code == 2
    assert problem in capsys.readouterr().err


def test_the_method_table_has_a_row_per_setting_and_a_column_per_sparsity(grid):
    """Best at the grid's target first, a blank where a setting has no run, and neither N:M rows
    (their sparsity is the pattern's) nor validation rows."""
    def row(setting, target, top1, n=3, split="test"):
        return {"setting": setting, "target_sparsity": target, "n": n, "top1_mean": top1,
                "top1_std": 0.001 if n > 1 else float("nan"), "eval_split": split}

    aggs = [row("pot", 0.5, 0.867), row("pot", 0.9, 0.75), row("unipts", 0.9, 0.84, n=5), row("unipts", 0.5, 0.88),
            row("gmp_full", 0.9, 0.868, n=1), row("sparsegpt-sparse-inputs", 0.7, 0.8255),
            row("nm-magnitude-2:4", 0.5, 0.8158, n=1), row("tune-pot", 0.9, 0.99, split="val")]
    real = grid.load_grid(grid.DEFAULT_GRID, grid.RESULTS)
    lines = grid.method_table(aggs, real).splitlines()
    assert lines[0] == "| setting | 0.5 | 0.7 | 0.9 |"
    assert lines[2:] == ["| gmp_full |  |  | 0.8680 (1) |",
                         "| unipts | 0.8800 ± 0.0010 (3) |  | 0.8400 ± 0.0010 (5) |",
                         "| pot | 0.8670 ± 0.0010 (3) |  | 0.7500 ± 0.0010 (3) |",
                         "| sparsegpt-sparse-inputs |  | 0.8255 ± 0.0010 (3) |  |"]
