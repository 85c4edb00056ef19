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
