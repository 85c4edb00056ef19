"""Issue 27: a run directory is locked while a process works in it; a killed holder leaves no stale lock."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from unipts import UniptsError
from unipts.runs.lock import LOCK_FILE, hold_run_lock

HOLDER = """
import sys, time
from unipts.runs.lock import hold_run_lock
with hold_run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock on ``tmp_path / "run"`` until killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), "--marker"], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_process_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(UniptsError) as err:
        with hold_run_lock(tmp_path / "run"):
            pytest.fail("a second holder got in")
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"hydra.run.dir: {tmp_path / 'run'} is in use by process {holder.pid} on "
                           f"{socket.gethostname()} (")
    assert "--marker" in line and " since " in line  # its command line, and when it started
    assert line.endswith("; wait for it to end, or choose another directory")


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert str(holder.pid) in (tmp_path / "run" / LOCK_FILE).read_text()  # the file stays, naming it
    with hold_run_lock(tmp_path / "run"):
        assert f'"pid": {os.getpid()}' in (tmp_path / "run" / LOCK_FILE).read_text()


def test_the_lock_is_released_and_erased_at_the_end(tmp_path):
    with hold_run_lock(tmp_path):
        with pytest.raises(UniptsError, match="is in use by process"):  # flock: even the same process, opened twice
            with hold_run_lock(tmp_path):
                pass
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a refused start leaves the directory as it found it
    with hold_run_lock(tmp_path):
        pass


def test_only_rank_zero_locks(tmp_path, holder, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child re-running rank 0's command in rank 0's directory
    with hold_run_lock(tmp_path / "run"):
        pass


def test_a_fifo_in_place_of_the_lock_file_is_refused_not_waited_on(tmp_path):
    (tmp_path / ".unipts").mkdir()
    os.mkfifo(tmp_path / LOCK_FILE)
    with pytest.raises(UniptsError, match=r"^hydra.run.dir: .*lock is not a regular file"):
        with hold_run_lock(tmp_path):
            pass
