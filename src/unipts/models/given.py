"""``model=given``: the dense network of a run that :func:`unipts.prune` was handed from Python."""

from __future__ import annotations

from typing import NoReturn

from ..common import UniptsError


def from_python(**_options) -> NoReturn:
    """Refuse to rebuild it: only the caller had the network's code."""
    raise UniptsError("model=given: this run's network was handed over from Python (unipts.prune), so no command "
                      "can rebuild it; use the module unipts.prune returned, or give model=<a network> (or a "
                      "model._target_) that builds the same architecture")
