"""What every baseline's settings dataclass shares: building from a mapping plus overrides, and
one-line checks that name the setting as ``<baseline>.<key>`` (``pot.batch_size``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

from ..checks import check_number

S = TypeVar("S", bound="Settings")


class Settings:
    """Mixin for a frozen dataclass of one baseline's settings; ``KEY`` names its config node."""

    KEY: ClassVar[str]

    @classmethod
    def build(cls: type[S], config: S | Mapping[str, Any] | None = None, **overrides) -> S:
        """The settings from ``config`` (an instance or a mapping) with ``overrides`` on top;
        unknown keys are refused, naming the valid ones."""
        base = asdict(config) if isinstance(config, cls) else dict(config or {})
        base.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(base) - known)
        if unknown:
            raise ValueError(f"{cls.KEY}: unknown settings {unknown}; valid: {sorted(known)}")
        return cls(**base)

    def check_number(self, key: str, **rule) -> None:
        check_number(getattr(self, key), f"{self.KEY}.{key}", **rule)

    def check_choice(self, key: str, choices: Sequence[str]) -> None:
        value = getattr(self, key)
        if value not in choices:
            raise ValueError(f"{self.KEY}.{key}: {value!r} is not one of {list(choices)}")

    def check_bool(self, key: str) -> None:
        if not isinstance(getattr(self, key), bool):
            raise ValueError(f"{self.KEY}.{key}: {getattr(self, key)!r} is not a boolean")
