"""Issue 27 through the entry points: a run directory is locked while used, and the run's identity
inside its checkpoints is checked on every resume, whether or not the run directory is intact."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FAST, run_cli
from .test_faults import _hashes, _refused

BASE = [*FAST, "finetune.epochs=1", "allocation=uniform"]


def test_a_locked_run_directory_is_refused_naming_its_holder(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *BASE, env=cli_env)
    before = _hashes(run_dir)
    assert (run_dir / ".unipts" / "lock").read_text() == ""  # released at the end
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom unipts.runs.lock import hold_run_lock\n"
                               "with hold_run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(run_dir)], stdout=subprocess.PIPE, text=True, env=cli_env)
    try:
        assert holder.stdout.readline() == "held\n"
        proc = run_cli("prune", run_dir, *BASE, "ckpt_path=last", env=cli_env, check=False)
        assert _refused(proc).startswith(f"error: hydra.run.dir: {run_dir} is in use by process {holder.pid} on ")
        holder.kill()
        holder.wait()
        assert _hashes(run_dir).keys() - before.keys() == set()  # nothing written by the refused command
        assert {k: v for k, v in _hashes(run_dir).items() if k != ".unipts/lock"} == \
            {k: v for k, v in before.items() if k != ".unipts/lock"}
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_the_identity_inside_the_checkpoint_is_checked_wherever_it_lies(tmp_path, cli_env):
    from unipts.runs.identity import checkpoint_identity

    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *BASE, env=cli_env)
    for name in ("last.ckpt", "final.ckpt"):
        record = checkpoint_identity(run_dir / "checkpoints" / name)
        assert record["config"]["sparsity.target"] == 0.9 and record["fingerprint"].startswith("sha256:")

    copied = tmp_path / "copied.ckpt"  # out of its run directory
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", copied)
    proc = run_cli("prune", tmp_path / "elsewhere", *BASE, f"ckpt_path={copied}", "sparsity.target=0.5", env=cli_env,
                   check=False)
    line = _refused(proc)
    assert line.startswith(f"error: sparsity.target: differ from the run being resumed (the checkpoint {copied})")
    assert "sparsity.target: 0.9 in the run, 0.5 now" in line

    (run_dir / ".unipts" / "config.json").unlink()  # a run directory that lost its record
    proc = run_cli("prune", run_dir, *BASE, "ckpt_path=last", "sparsity.target=0.5", env=cli_env, check=False)
    assert "sparsity.target: 0.9 in the run, 0.5 now" in _refused(proc)


def _final_state(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cli_env) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_cli("prune", run_dir, *BASE, env=cli_env)
    return run_dir


def test_a_finished_run_is_reported_not_resumed_and_nothing_changes(finished_run, cli_env):
    run_dir = finished_run
    every_file = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}  # the log too
    proc = run_cli("prune", run_dir, *BASE, "ckpt_path=last", env=cli_env, check=False)
    notes = [line for line in proc.stderr.splitlines() if line.startswith(("note:", "error:"))]
    assert proc.returncode == 0 and notes == [
        f"note: {run_dir}: the run has finished (checkpoints/final.ckpt, summary.json); there is nothing to resume and "
        f"nothing was changed; its results are in {run_dir / 'summary.json'}. To run it again, start a new run: "
        "leave ckpt_path and hydra.run.dir out"], proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == every_file


@pytest.mark.slow
def test_the_last_checkpoint_of_a_run_killed_before_its_summary_resumes_to_the_final_model(finished_run, tmp_path,
                                                                                           cli_env):
    """End to end (test_txn_decisions checks the callbacks' order in process, in the default run)."""
    import json

    import torch

    run_dir = finished_run
    killed = tmp_path / "killed"
    shutil.copytree(run_dir, killed)
    (killed / "summary.json").unlink()
    (killed / "checkpoints" / "final.ckpt").unlink()
    run_cli("prune", killed, *BASE, "ckpt_path=last", env=cli_env)
    finished, resumed = _final_state(run_dir), _final_state(killed)
    assert finished.keys() == resumed.keys()
    for key in finished:  # before: the final re-mask came after last.ckpt, so one layer's mask differed
        assert torch.equal(finished[key], resumed[key]), key
    top1 = [json.loads((d / "summary.json").read_text())["top1"] for d in (run_dir, killed)]
    assert top1[0] == top1[1]


@pytest.mark.parametrize("override,start", [
    ("model.exclude=[fcc]", "error: model.exclude: 'fcc' matches no Conv2d or Linear layer (whole names, with * and ?, "
                            "e.g. 'layer1.*'); its prunable layers: features.0, features.3, features.7, fc"),
    ("sparsity.pattern=1:7", "error: sparsity.pattern: 1:7: no layer of the network can carry it (a layer needs a "
                             "multiple of 7 inputs per output; here: features.0 9, features.3 288, features.7 576, "
                             "fc 128); valid: an M (up to 16) among [2, 3, 4, 6, 8, 9, 12, 16], e.g. 2:4"),
])
def test_a_pattern_that_selects_nothing_is_refused_before_any_work(tmp_path, cli_env, override, start):
    extra = ["sparsity.target=0.857"] if "pattern" in override else []  # 1 - 1/7: the target the pattern fixes
    proc = run_cli("prune", tmp_path / "run", *BASE, override, *extra, env=cli_env, check=False)
    assert _refused(proc) == start
    assert "dense model" not in proc.stdout + proc.stderr  # before the dense model was trained, loaded or scored


def test_ctrl_c_in_the_fine_tune_ends_in_one_line_with_the_quoted_resume_command(tmp_path, cli_env, ctrl_c):
    import shlex
    import signal

    run_dir = tmp_path / "my runs" / "a"  # a space in the path must survive a copy-paste of the command
    args = [*FAST, "finetune.epochs=40", "allocation=uniform"]
    proc = subprocess.Popen([sys.executable, "-m", "unipts.cli.prune", f"hydra.run.dir={run_dir}", *args],
                            cwd=tmp_path, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "fine-tune: epoch 4/" in line:  # epochs 1, 4, 8...: after a checkpoint
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, "".join(seen[-5:]) + rest
    errors = [line for line in rest.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in rest, rest[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert errors[0].startswith(f"error: {run_dir}: stopped by SIGINT; {last} holds the last complete epoch; "
                                "resume with: unipts-prune "), errors[0]
    command = shlex.split(errors[0].split("resume with: ", 1)[1])
    assert command == ["unipts-prune", *args, "ckpt_path=last", f"hydra.run.dir={run_dir}"]
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "summary.json").exists()
    run_cli("prune", run_dir, *command[1:], env=cli_env)  # the command as printed resumes it to the end
    assert (run_dir / "summary.json").is_file()
