"""What every entry point shares: the config location and the one-line error report."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

from .. import UniptsError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

log = logging.getLogger("unipts")


def reports_errors(task):
    """Turn a :class:`UniptsError` into one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(task)
    def wrapper(cfg):
        try:
            return task(cfg)
        except UniptsError as exc:
            log.error("%s", exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
