"""Issue 27: unipts-collect reconciles a sweep's own record of its jobs with what it finds, and reads
only regular files, bounded in size."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unipts.runs.sweep import BASIC_SWEEPER, UnknownJobs, expected_jobs

# A stand-in for a unipts entry point: a Hydra app that writes a summary.json into its run folder.
APP = """
import json, sys
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path=".", config_name="prune")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "summary.json").write_text(json.dumps({"task": "prune", "method": "magnitude", "target_sparsity": cfg.x}))

main()
"""


def _collect(root: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    """``unipts-collect root``; a hang fails the test instead of blocking it."""
    return subprocess.run([sys.executable, "-m", "unipts.collect", str(root)], capture_output=True, text=True,
                          timeout=timeout)


def _errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _summary(job_dir: Path, target: float) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "summary.json").write_text(json.dumps({"task": "prune", "method": "magnitude", "target_sparsity": target}))


def _multirun(sweep: Path, task: list[str], subdir: str = "${hydra.job.num}", params: dict | None = None) -> None:
    """A sweep record as Hydra's basic sweeper writes it (the keys collect reads)."""
    sweep.mkdir(parents=True, exist_ok=True)
    record = {"hydra": {"sweep": {"dir": str(sweep), "subdir": subdir}, "overrides": {"hydra": [], "task": task},
                        "sweeper": {"_target_": BASIC_SWEEPER, "max_batch_size": None, "params": params}},
              "task": "prune"}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))


def test_a_job_the_sweep_never_ran_is_named_after_a_stopped_sweep_and_a_resume_by_hand(tmp_path):
    """The issue's case: a 3-job sweep stopped during job 1 (job 2 never started), job 1 then
    finished by hand in its own folder. A real Hydra sweep writes the record."""
    app, sweep = tmp_path / "app.py", tmp_path / "sweep"
    app.write_text(APP)
    (tmp_path / "prune.yaml").write_text("task: prune\nx: 0.5\nmethod: unipts\n")
    subprocess.run([sys.executable, str(app), "-m", "x=0.5,0.7,0.9", "method=magnitude", f"hydra.sweep.dir={sweep}"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=120)
    (sweep / "1" / "summary.json").unlink()  # stopped during job 1...
    for path in sorted((sweep / "2").rglob("*"), reverse=True):  # ...before job 2 started
        path.rmdir() if path.is_dir() else path.unlink()
    (sweep / "2").rmdir()
    subprocess.run([sys.executable, str(app), "x=0.7", "method=magnitude", f"hydra.run.dir={sweep / '1'}"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=120)  # job 1 resumed by hand

    proc = _collect(sweep)
    assert proc.returncode == 1, proc.stderr
    assert sorted(r["run_dir"] for r in csv.DictReader((sweep / "results.csv").open())) == ["0", "1"]
    errors = _errors(proc)
    assert len(errors) == 1, proc.stderr
    assert errors[0] == ("error: job 2 (x=0.9 method=magnitude): never ran (no folder 2/): the sweep "
                         "stopped before it, or has not reached it yet; run it alone with: unipts-prune x=0.9 method=magnitude "
                         f"hydra.run.dir={sweep / '2'}")


def test_a_started_job_without_a_summary_is_named_and_a_whole_sweep_collects_cleanly(tmp_path):
    sweep = tmp_path / "sweep"
    _multirun(sweep, ["sparsity.target=0.5,0.9", "seed=0"])
    _summary(sweep / "0", 0.5)
    (sweep / "1").mkdir()  # killed before its .hydra/ was even written
    proc = _collect(sweep)
    assert proc.returncode == 1 and _errors(proc) == [
        "error: job 1 (sparsity.target=0.9 seed=0): no summary.json: the job did not finish (stopped, killed or running)"]
    _summary(sweep / "1", 0.9)
    proc = _collect(sweep)
    assert proc.returncode == 0 and _errors(proc) == [], proc.stderr


def test_a_fifo_named_summary_json_is_named_not_waited_on(tmp_path):
    sweep = tmp_path / "sweep"
    _multirun(sweep, ["sparsity.target=0.5,0.9"])
    _summary(sweep / "0", 0.5)
    (sweep / "1").mkdir()
    os.mkfifo(sweep / "1" / "summary.json")
    proc = _collect(sweep)
    assert proc.returncode == 1
    assert _errors(proc) == ["error: job 1: summary.json is a FIFO, not a regular file"]
    assert [r["run_dir"] for r in csv.DictReader((sweep / "results.csv").open())] == ["0"]


@pytest.mark.parametrize("name", ["failure.json", "multirun.yaml", ".hydra/overrides.yaml"])
def test_a_fifo_in_place_of_any_record_is_named_not_waited_on(tmp_path, name):
    sweep = tmp_path / "sweep"
    _multirun(sweep, ["sparsity.target=0.5,0.9"])
    _summary(sweep / "0", 0.5)
    _summary(sweep / "1", 0.9)
    fifo = sweep / ("1" if name != "multirun.yaml" else "") / name
    fifo.parent.mkdir(exist_ok=True)
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    if name == "failure.json":
        (sweep / "1" / "summary.json").unlink()
    proc = _collect(sweep)
    assert proc.returncode == 1
    (line,) = _errors(proc)
    assert f"{Path(name).name} is a FIFO, not a regular file" in line, line


def test_an_oversized_summary_is_named_not_read(tmp_path):
    _summary(tmp_path / "a", 0.5)
    with open(tmp_path / "a" / "summary.json", "r+b") as f:
        f.truncate(17 * 2**20)  # sparse: costs no disk
    proc = _collect(tmp_path)
    assert proc.returncode == 1
    assert _errors(proc) == [f"error: job a: summary.json is larger than 16 MiB ({17 * 2**20} bytes)"]


def test_a_sweep_with_its_own_folder_names_counts_the_jobs_that_never_ran(tmp_path):
    sweep = tmp_path / "sweep"
    _multirun(sweep, ["sparsity.target=0.5,0.7,0.9"], subdir="${hydra.job.override_dirname}")
    for target in (0.5, 0.7):
        _summary(sweep / f"sparsity.target={target}", target)
    proc = _collect(sweep)
    assert proc.returncode == 1
    assert _errors(proc) == ["error: job .: 3 jobs in its multirun.yaml, 2 job folders: 1 never ran "
                             "(hydra.sweep.subdir is not the job number, so which cannot be told)"]


def test_a_sweep_whose_jobs_cannot_be_listed_gets_a_note_not_a_failure(tmp_path):
    sweep = tmp_path / "sweep"
    _multirun(sweep, ["model=glob(*)"])  # expanding glob() needs Hydra's config loader
    _summary(sweep / "0", 0.5)
    proc = _collect(sweep)
    assert proc.returncode == 0 and _errors(proc) == [], proc.stderr
    assert f"note: sweep {sweep}: hydra.overrides.task cannot be expanded here (" in proc.stderr


def test_expected_jobs_follow_the_basic_sweeper():
    def hydra(task, **sweeper):
        return {"sweeper": {"_target_": BASIC_SWEEPER, **sweeper}, "overrides": {"task": task}}

    assert expected_jobs(hydra(["a=1,2", "b=range(2)", "c=x"])) == [
        ["a=1", "b=0", "c=x"], ["a=1", "b=1", "c=x"], ["a=2", "b=0", "c=x"], ["a=2", "b=1", "c=x"]]
    assert expected_jobs(hydra(["b=3,4"], params={"a": "1,2"}, max_batch_size=1)) == [
        ["a=1", "b=3"], ["a=1", "b=4"], ["a=2", "b=3"], ["a=2", "b=4"]]
    assert expected_jobs(hydra(["a=shuffle(1,2,3)"])) == [None, None, None]  # how many, not which
    assert expected_jobs(hydra([])) == [[]]
    with pytest.raises(UnknownJobs, match="hydra.sweeper is hydra_plugins.x.Optuna, which chooses its jobs"):
        expected_jobs({"sweeper": {"_target_": "hydra_plugins.x.Optuna"}, "overrides": {"task": ["a=1,2"]}})
    with pytest.raises(UnknownJobs, match=r"^hydra.overrides.task cannot be expanded here"):
        expected_jobs(hydra(["model=glob(*)"]))


@pytest.mark.timeout(60)
def test_the_sweeps_own_report_names_a_fifo_failure_record_not_waits_on_it(tmp_path, capsys):
    """At the end of a sweep, SweepStatus reads the jobs' failure.json files: as collect does, only
    regular files (before, a FIFO in a job's folder hung the sweep's end forever)."""
    from omegaconf import OmegaConf

    from unipts.cli._hooks import SweepStatus
    from unipts.runs.jobs import write_failure

    sweep = tmp_path / "sweep"
    write_failure(sweep / "0", "0", ["sparsity.target=1.5"], "sparsity.target: 1.5 is outside [0.0, 1.0)")
    (sweep / "1").mkdir()
    os.mkfifo(sweep / "1" / "failure.json")
    with pytest.raises(SystemExit) as end:
        SweepStatus().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert end.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: sweep: job 0 (sparsity.target=1.5): sparsity.target: 1.5 is outside [0.0, 1.0)",
        "error: sweep: job 1: failure.json is a FIFO, not a regular file",
        f"error: sweep: 2 job(s) failed; the others' results are in {sweep} (unipts-collect lists both)"]


def test_a_resumed_runs_total_time_counts_its_earlier_sessions(tmp_path):
    from unipts.collect import row

    for name, wall in (("fresh", {"finetune": 50.0, "total": 60.0}),
                       ("resumed", {"finetune": 50.0, "total": 60.0, "earlier_sessions": 3600.0})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"task": "prune", "wall_s": wall}))
    assert row(tmp_path / "fresh" / "summary.json", tmp_path)["total_s"] == 60.0
    assert row(tmp_path / "resumed" / "summary.json", tmp_path)["total_s"] == 3660.0
