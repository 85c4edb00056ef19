"""The check of one setting's value, shared by the configuration (which names a key, such as
``calib.size``) and the engine (which names its own setting, such as ``pot.batch_size``).

Plain Python: the engine may use it. It raises :class:`ValueError`; the entry points turn that
into the user's one-line error.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path


def check_number(value, name: str, *, low=None, high=None, low_open: bool = False, high_open: bool = False,
                 integer: bool = False, allow_none: bool = False):
    """``value``, if it is a finite number (an integer with ``integer``) in the range from ``low``
    to ``high`` (either end excluded with ``low_open``/``high_open``); ``None`` passes with
    ``allow_none``. Otherwise a :class:`ValueError` naming ``name``, the value and the range."""
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ValueError(f"{name}: {value!r} is not {kind}")
    if not math.isfinite(value):  # NaN passes every range check, inf every lower bound
        raise ValueError(f"{name}: {value} is not a finite number")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if (below or above) and low is not None and high is not None:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}: {value} is outside {interval}")
    if below:
        raise ValueError(f"{name}: {value} must be > {low}" if low_open else f"{name}: {value} is below the minimum {low}")
    if above:
        raise ValueError(f"{name}: {value} is above the maximum {high}" if not high_open else f"{name}: {value} must be < {high}")
    return value


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a writable folder, or None. Whether the nearest existing
    folder takes a file is tried, not judged from permissions (root passes every permission
    check, yet cannot write under /proc or on a read-only mount); nothing is left behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder" if existing == path else f"{existing} is a file, so {path} cannot be created"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        why = f"cannot write in {existing} ({exc.strerror or exc})"
        return why if existing == path else f"{why}, so {path} cannot be created"
    return None
