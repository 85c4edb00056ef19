"""How a section of the run spec is read from its configuration node: every key known or refused,
every value checked where the section defines it, each failure one :class:`~unipts.UniptsError`
naming the dotted key."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

from ..common import UniptsError
from ..checks import check_number

T = TypeVar("T")


def read_section(cls: type[T], node: Any, key: str, **context) -> T:
    """``cls`` (a dataclass) from the mapping ``node`` at ``key``: a key ``cls`` does not define is
    refused (a typo would otherwise be silently ignored), one it needs and lacks is named.
    ``context``: values the section's checks need from elsewhere in the run (not config keys)."""
    if not isinstance(node, Mapping):
        raise UniptsError(f"{key}: {node!r} is not a group of settings")
    known = [f.name for f in fields(cls) if f.init and f.name not in context]
    unknown = [k for k in node if k not in known]
    if unknown:
        raise UniptsError(f"{key}.{unknown[0]}: unknown key; valid under {key}: {', '.join(known)}")
    required = [f.name for f in fields(cls) if f.init and f.name not in context and f.name not in node
                and f.default is MISSING and f.default_factory is MISSING]
    if required:
        raise UniptsError(f"{key}.{required[0]}: required")
    return cls(**node, **context)


def number(value, key: str, **rule):
    """``value``, checked by :func:`unipts.checks.check_number` (``rule``: its range)."""
    try:
        return check_number(value, key, **rule)
    except ValueError as exc:
        raise UniptsError(str(exc)) from exc


MAX_SEED = 2**32 - 1  # Lightning's seed_everything (numpy's generator) takes no larger seed


def random_seed(value, key: str) -> int:
    """A random seed: an integer every generator the run seeds accepts (``0..2**32 - 1``)."""
    return number(value, key, low=0, high=MAX_SEED, integer=True)


def boolean(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise UniptsError(f"{key}: {value!r} is not a boolean (true or false)")
    return value


def one_of(value, key: str, valid) -> Any:
    if value not in valid:
        raise UniptsError(f"{key}: {value!r} is not one of {list(valid)}")
    return value


def existing_path(value, key: str) -> None:
    """A path that must exist when given (None passes)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise UniptsError(f"{key}: {value!r} is not a path")
    if not Path(value).expanduser().exists():
        raise UniptsError(f"{key}: no such file or folder: {value}")


@contextmanager
def in_engine_words(key: str) -> Iterator[None]:
    """Inside: the engine's :class:`ValueError` (its message starts with the option's own name,
    e.g. ``"population: ..."``) becomes the user's one line under ``key``."""
    try:
        yield
    except UniptsError:
        raise
    except ValueError as exc:
        raise UniptsError(f"{key}.{exc}") from exc
