"""A run's identity: what a resume must repeat, and the record of it inside every checkpoint.

The identity of a run is the part of its resolved configuration that changes what it computes
(every key but :data:`FREE_KEYS`), flattened to dotted keys, plus a fingerprint of the data it
started from (the dense weights and the calibration indices). ``<run dir>/.unipts/config.json``
keeps the configuration beside the checkpoints; this module puts the identity *inside* each
checkpoint as well (under :data:`IDENTITY_KEY`), so that a ``last.ckpt`` copied out of its run
directory, or a run directory that has lost ``.unipts/``, is still checked against the command
that resumes it.

Plain Python (torch only inside :func:`fingerprint`): the entry points, the Lightning callback
(:class:`unipts.lightning.callbacks.RunIdentity`) and the checkpoint readers all use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..common import UniptsError

# Keys that cannot change what a run computes, and so may differ on resume: where it writes, how it
# logs and shows progress, how many checkpoints it keeps, how many loader processes it uses, where
# to resume from. A key ending in "_" matches every key it begins (trainer.enable_progress_bar...).
FREE_KEYS = ("ckpt_path", "hydra", "paths", "logger", "runtime", "checkpoint", "data.num_workers", "data.data_dir",
             "trainer.enable_",
             "trainer.log_every_n_steps", "trainer.check_val_every_n_epoch")
ABSENT = "<absent>"

IDENTITY_KEY = "unipts_identity"  # a checkpoint's top-level key holding :func:`identity_record`'s record


def is_free(key: str) -> bool:
    return any(key.startswith(p) if p.endswith("_") else key == p or key.startswith(p + ".") for p in FREE_KEYS)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in _flatten(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def identity(config: dict) -> dict[str, Any]:
    """The keys of a resolved configuration that define what the run computes, flattened.
    (Idempotent: the identity of an identity is itself, so either may be compared.)"""
    return {k: v for k, v in _flatten(config).items() if not is_free(k)}


def differences(recorded: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, current value)`` for each identity key that differs."""
    a, b = identity(recorded), identity(current)
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(a.keys() | b.keys()) if a.get(k, ABSENT) != b.get(k, ABSENT)]


def describe_changes(changed: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    """``key: old in the run, new now; ...`` for the first ``limit`` differences."""
    shown = "; ".join(f"{k}: {old!r} in the run, {new!r} now" for k, old, new in changed[:limit])
    return shown + (f"; and {len(changed) - limit} more" if len(changed) > limit else "")


def changed_settings_error(changed: list[tuple[str, Any, Any]], source: str) -> UniptsError:
    """The one-line refusal of a resume whose command differs from ``source`` (the run being
    resumed: its directory, or a checkpoint) in the keys ``changed``."""
    free = ", ".join(k + "*" if k.endswith("_") else k for k in FREE_KEYS)
    return UniptsError(f"{', '.join(k for k, _, _ in changed)}: differ from the run being resumed ({source}): "
                       f"{describe_changes(changed)}. A resume must repeat the run's settings; only {free} may change")


# -- the data a run starts from --------------------------------------------------------------------

def fingerprint(dense_state_dict: Mapping[str, Any], calib_indices: Iterable[int]) -> str:
    """``sha256:<hex>`` of the dense weights and the calibration indices: two runs with the same
    configuration but another dense model (a replaced ``dense_ckpt`` file, another cached
    pre-training) or another calibration subset get different fingerprints.

    Covers every tensor's name, dtype, shape and values, in sorted key order; the bytes are those
    of the values in logical order (``reshape(-1)`` copies a strided tensor), so a channels-last
    model and the same model on a GPU agree.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(dense_state_dict):
        tensor = dense_state_dict[name].detach().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # uint8: bfloat16 has no numpy twin
    digest.update(b"calib|" + json.dumps([int(i) for i in calib_indices]).encode())
    return f"sha256:{digest.hexdigest()}"


# -- the record inside a checkpoint ---------------------------------------------------------------

def identity_record(resolved_config: dict, fingerprint: str | None = None) -> dict:
    """What a checkpoint carries: ``{"config": identity(resolved_config), "fingerprint": ...}``
    (``fingerprint`` None where a run has no dense model to start from: a pre-training).
    Plain JSON-able data, readable with ``torch.load(weights_only=True)``."""
    return {"config": identity(resolved_config), "fingerprint": fingerprint}


def with_identity(obj: dict, record: dict) -> dict:
    """``obj`` (a checkpoint about to be saved: ``final.ckpt``'s dict) with ``record`` in it."""
    return {**obj, IDENTITY_KEY: record}


def identity_of(checkpoint: Any) -> dict | None:
    """The record inside an already-loaded checkpoint; None when it has none (written before
    checkpoints carried one, or not by unipts) or a malformed one."""
    record = checkpoint.get(IDENTITY_KEY) if isinstance(checkpoint, dict) else None
    return record if isinstance(record, dict) and isinstance(record.get("config"), dict) else None


def checkpoint_identity(path: str | Path, key: str = "ckpt_path") -> dict | None:
    """The record inside the checkpoint file at ``path``, read as data (weights only); None when
    it has none. An unreadable file is :class:`~unipts.UniptsError` naming ``key`` and the path."""
    from ..models import load_checkpoint_object

    return identity_of(load_checkpoint_object(path, key))


def check_identity(record: dict | None, current: dict | None, source: str, fingerprint: str | None = None) -> bool:
    """Refuse a resume that does not repeat the run ``record`` was saved by.

    ``record``: the checkpoint's (:func:`identity_of`); ``current``: this command's resolved
    configuration (None: check the fingerprint only); ``source``: how to name the checkpoint in
    the message; ``fingerprint``: this command's (None: not known yet, not checked). Raises
    :class:`~unipts.UniptsError` on a difference; returns whether there was a record to check
    against (False: the caller decides whether an unchecked resume may go on).
    """
    if record is None:
        return False
    if current is not None:
        changed = differences(record["config"], current)
        if changed:
            raise changed_settings_error(changed, source)
    recorded = record.get("fingerprint")
    if fingerprint is not None and recorded is not None and recorded != fingerprint:
        raise UniptsError(f"dense_ckpt, calib: the dense model or the calibration subset differ from those {source} "
                          f"was trained from (fingerprint {recorded[:19]}... there, {fingerprint[:19]}... now); resume "
                          "with the run's own dense model (dense_ckpt, or the same pre-training cache) and calib settings")
    return True
