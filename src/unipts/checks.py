"""The check of one setting's value, shared by the configuration (which names a key, such as
``calib.size``) and the engine (which names its own setting, such as ``pot.batch_size``).

Plain Python: the engine may use it. It raises :class:`ValueError`; the entry points turn that
into the user's one-line error.
"""

from __future__ import annotations

import math


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
    if low is not None and low_open and value <= low:
        raise ValueError(f"{name}: {value} must be > {low}")
    if low is not None and value < low:
        raise ValueError(f"{name}: {value} is below the minimum {low}")
    if high is not None and (value >= high if high_open else value > high):
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name}: {value} is outside {interval}")
    return value
