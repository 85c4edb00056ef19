"""The ``trainer.*`` settings checked before any work: Lightning itself only complains when the
Trainer is built, after the dense model and the search, and then with a traceback.

Lightning is imported only for an unusual setting: the import costs every command a second or
two, and a refused command should answer at once."""

from __future__ import annotations

from typing import Any, get_args

import torch

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def _literals(hint) -> list:
    """The values a (nested) ``Literal``/``Union`` type hint allows."""
    args = get_args(hint)
    return [v for a in args for v in _literals(a)] if args and not isinstance(args[0], (str, int)) else list(args)


# The precisions unipts' presets and README use: accepted without asking Lightning.
COMMON_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", 32, "32")


def precisions() -> list:
    """Every ``trainer.precision`` this Lightning accepts."""
    from lightning.fabric.connector import _PRECISION_INPUT

    return _literals(_PRECISION_INPUT)


def _available(accelerator: str) -> bool:
    if accelerator in ("auto", "cpu"):
        return True
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda", "mps"):
        return {"gpu": cuda or mps, "cuda": cuda, "mps": mps}[accelerator]
    from lightning.fabric.accelerators import XLAAccelerator

    return XLAAccelerator.is_available()


def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_list(devices: Any) -> list[int] | None:
    """GPU indices named by ``devices`` (``[0, 2]`` or ``"0,2"``); None for a count or ``auto``."""
    if isinstance(devices, (list, tuple)):
        return [int(d) for d in devices]
    if isinstance(devices, str) and "," in devices:
        return [int(d) for d in devices.split(",") if d.strip()]
    return None


def trainer_problem(trainer: dict) -> str | None:
    """What is wrong with the ``trainer`` settings (accelerator, precision, devices) on this
    machine, as one line naming the key; None when Lightning will accept them."""
    accelerator = trainer.get("accelerator", "auto")
    if accelerator not in ACCELERATORS:
        return f"trainer.accelerator: {accelerator!r} is not one of {list(ACCELERATORS)}"
    if not _available(accelerator):
        return f"trainer.accelerator: {accelerator}: none is available to this process; valid here: cpu, auto"
    precision = trainer.get("precision", "32-true")
    if precision not in COMMON_PRECISIONS and precision not in precisions():
        return f"trainer.precision: {precision!r} is not one of {precisions()}"
    devices = trainer.get("devices", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and _gpu_count() == 0)
    try:
        listed = device_list(devices)
        count = None if listed is not None or devices == "auto" else int(devices)
    except (TypeError, ValueError):
        return f"trainer.devices: {devices!r} is not a number of devices, a list of GPU indices or auto"
    if on_cpu:
        wrong = listed is not None or (count is not None and count < 1)
        return f"trainer.devices: {devices!r}: on the CPU give a number of processes >= 1, or auto" if wrong else None
    if count is not None and count < 1 and count != -1:
        return f"trainer.devices: {devices!r}: give a number of GPUs >= 1, -1 (all), a list of indices, or auto"
    gpus, wanted = _gpu_count(), listed if listed is not None else range(max(count or 0, 0))
    if gpus and any(not 0 <= i < gpus for i in wanted):
        return f"trainer.devices: {devices!r}: this machine has {gpus} GPU(s) (indices 0..{gpus - 1})"
    return None
