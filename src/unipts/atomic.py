"""Atomic file writes: every output goes to a temporary name beside its target and is renamed into
place only once complete, so a crash never leaves a half-written file under a final name and an
existing file is only ever replaced by a whole one.

An OSError while writing (a full disk, a read-only folder) becomes a :class:`UniptsError` naming
the path. Finished files get the usual permissions (``0o666`` less the umask), not the private ``0o600``
that :func:`tempfile.mkstemp` gives its files. Plain Python and PyTorch: the engine may use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .common import UniptsError
from .signals import signals_held


def usual_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def staged(out_dir: str | Path, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Temporary paths in ``out_dir``, one per name, renamed to the names together when the block
    succeeds and removed when it fails."""
    out_dir = Path(out_dir)
    tmp: dict[str, Path] = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            fd, path = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            tmp[name] = Path(path)
        yield tmp
        mode = usual_file_mode()
        for path in tmp.values():
            path.chmod(mode)
        with signals_held():  # a Ctrl-C between two renames would leave one file new, the other old
            for name, path in tmp.items():
                os.replace(path, out_dir / name)
    except BaseException as exc:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a read-only folder, a file where a folder belongs
            where = exc.filename if exc.filename and not str(exc.filename).endswith(".tmp") else (
                out_dir / names[0] if len(names) == 1 else out_dir)
            raise UniptsError(f"{where}: cannot write ({exc.strerror or exc}); nothing was written there: "
                              "free some space or choose a writable folder") from exc
        raise


def remove_leftovers(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``out_dir`` (a SIGKILL mid-write runs no
    cleanup); returns them. Only a resumed run calls it: nothing else writes there then."""
    leftovers = sorted(Path(out_dir).glob(".*.tmp")) if Path(out_dir).is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed onto ``path`` on success."""
    path = Path(path)
    with staged(path.parent, [path.name]) as tmp:
        yield tmp[path.name]


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary name."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)  # through a Python file, a full disk is an OSError, not torch's RuntimeError


def non_finite_fields(data: Any, where: str = "") -> list[str]:
    """Dotted paths of the NaN/Infinity floats in nested dicts and lists."""
    if isinstance(data, float):
        return [] if math.isfinite(data) else [where or "<value>"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite_fields(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in non_finite_fields(v, f"{where}[{i}]")]
    return []


def finite_or_null(data: Any) -> Any:
    """``data`` with every NaN/Infinity float replaced by None: JSON has no such numbers, and
    Python's ``NaN``/``Infinity`` tokens make a file other readers refuse."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(v) for v in data]
    return data


def write_json_atomic(path: str | Path, data: Any) -> list[str]:
    """Write ``data`` as strict JSON (non-finite floats become null). Returns the paths of the
    fields so replaced, for the caller to report."""
    replaced = non_finite_fields(data)
    text = json.dumps(finite_or_null(data) if replaced else data, indent=2, default=str, allow_nan=False)
    write_text_atomic(path, text + "\n")
    return replaced
