"""One process at a time in a run directory.

Two commands working in one run directory at once (two ``ckpt_path=last`` resumes of one killed
run, say) would both append to its metrics and overwrite each other's checkpoints. While a command
works in a run directory it therefore holds an exclusive :func:`fcntl.flock` on
``<run dir>/.unipts/lock``; a second command is refused in one line naming the holder.

The lock belongs to the open file, not to the file's existence: the kernel drops it when the
holding process ends, however it ends (a SIGKILL, a crash, a node reboot), so a killed run never
leaves a stale lock behind. The file itself stays, naming its last holder, and is simply opened
again by the next command. (A process forked by the holder — a DataLoader worker — shares the open
file, so the lock lasts until those workers have exited too: seconds after the holder's death.)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..common import UniptsError
from .ranks import launched_rank

LOCK_FILE = Path(".unipts") / "lock"


def _holder() -> dict:
    """Who holds the lock, for the message a refused command shows."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _describe_holder(fd: int) -> str:
    """``process 123 on node1 (unipts-prune ...) since ...``, as the holder wrote it; a holder that
    has not written yet, or has just let go, is only "another process"."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 64 * 1024) or b"null")
        return f"process {holder['pid']} on {holder['host']} ({holder['command']}) since {holder['since']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"


def _open_lock_file(path: Path) -> int:
    """The lock file, created if absent; a FIFO, device or link put in its place is refused, never
    waited on (O_NONBLOCK) or followed (O_NOFOLLOW)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        what = "is a link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise UniptsError(f"hydra.run.dir: cannot open the run's lock file {path} ({what}); "
                          "remove it or choose another directory") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UniptsError(f"hydra.run.dir: {path} is not a regular file, so the run cannot be locked; "
                          "remove it or choose another directory")
    return fd


@contextmanager
def hold_run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``<run_dir>/.unipts/lock`` for the block, or refuse at once if another process holds it.

    Raises :class:`~unipts.UniptsError` in one line naming the holder (pid, host, command line,
    since when). Only global rank 0 locks: the extra DDP processes re-run the same command in the
    same directory as rank 0's children and must not be refused by it. On leaving the block the
    holder's details are erased, so a finished run's lock file is empty and a refused start
    leaves the run directory byte for byte as it found it.
    """
    if launched_rank() != 0:
        yield
        return
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UniptsError(f"hydra.run.dir: {run_dir} is in use by {_describe_holder(fd)}; wait for it to end, "
                              "or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # still held: nobody reads a half-erased holder
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
