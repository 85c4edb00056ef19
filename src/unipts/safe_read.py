"""Reading files found on disk that nothing guarantees are files: only regular files, bounded in size.

``unipts-collect`` reads whatever a sweep folder holds. A FIFO named ``summary.json`` would block
a plain ``open()`` forever, a device would stream without end, and a runaway file would be read
whole into memory; each is refused here in words instead, naming what the path is.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_BYTES = 16 * 2**20  # far above any summary, record or Hydra file unipts writes

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class UnreadableFile(ValueError):
    """A file that is not a regular file, too large, or cannot be read; the message begins with
    its name: ``summary.json is a FIFO, not a regular file``."""


def _kind_problem(mode: int, size: int, limit: int) -> str | None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a file")
        return f"is {kind}, not a regular file"
    if size > limit:
        return f"is larger than {limit // 2**20} MiB ({size} bytes)"
    return None


def read_regular(path: str | Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; anything else is
    :class:`UnreadableFile`. The check is made on the opened file, which is opened non-blocking,
    so a FIFO put in a file's place between a listing and this call is refused, not waited on."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFile(f"{path.name} is unreadable ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        problem = _kind_problem(info.st_mode, info.st_size, limit)
        if problem:
            raise UnreadableFile(f"{path.name} {problem}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)  # a file still growing is bounded all the same
    except OSError as exc:
        raise UnreadableFile(f"{path.name} is unreadable ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UnreadableFile(f"{path.name} is larger than {limit // 2**20} MiB")
    return data
