"""The engine's refusals as the user's one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..common import UniptsError


@contextmanager
def engine_errors() -> Iterator[None]:
    """The engine's refusals (a table that does not fit, sizes out of range) as the user's one line:
    its messages name the configuration key."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise UniptsError(str(exc)) from exc
