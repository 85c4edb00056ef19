"""The methods a prune run can use, one module each, and how a run gets its own.

``conf/method/<name>.yaml`` names the class with ``_target_`` and gives its options; ``method=<name>``
picks one. A method of your own is a :class:`Method` subclass and such a file (README: "Adding a
method").
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .. import UniptsError
from .base import Job, Method, allocation_options
from .gmp_full import GmpFull
from .magnitude import Magnitude
from .pot import Pot
from .unipts import UniPTS

__all__ = ["Job", "Method", "allocation_options", "GmpFull", "Magnitude", "Pot", "UniPTS", "build_method"]

PRESETS = Path(__file__).resolve().parent.parent / "conf" / "method"


def build_method(cfg: DictConfig) -> Method:
    """The run's method, instantiated from the ``method`` node; an option it refuses is one
    :class:`~unipts.UniptsError` naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = cfg.get("method")
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        presets = "|".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise UniptsError(f"method._target_: {target!r} is not a method class; valid: method=<{presets}>, or a "
                          "conf/method/<name>.yaml of your own whose method._target_ names a unipts.methods.Method")
    try:
        method = instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UniptsError):
            raise cause from exc
        if isinstance(cause, ValueError):  # the method's words name the option under the node
            raise UniptsError(f"method.{cause}") from exc
        if isinstance(cause, TypeError):  # an option the class does not take
            raise UniptsError(f"method: {cause}") from exc
        raise UniptsError(f"method._target_: cannot make {target!r} ({str(exc).splitlines()[0]})") from exc
    if not isinstance(method, Method):
        raise UniptsError(f"method._target_: {target} is a {type(method).__name__}, not a unipts.methods.Method")
    return method
