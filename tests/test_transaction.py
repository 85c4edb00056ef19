"""Issue 27 through the entry points: a run directory is locked while used, and the run's identity
inside its checkpoints is checked on every resume, whether or not the run directory is intact."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FAST, run_cli

BASE = [*FAST, "finetune.epochs=1", "allocation=uniform"]


def _refused(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    return errors[0]


def _hashes(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.suffix != ".log"}


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
