"""Where a method's own forward passes run when no fit drives them (POT's reconstruction, a search
without a fine-tune, BatchNorm re-estimation after it): on the device the fit runs on, in the
precision ``trainer.precision`` asks for, as Lightning would run them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..trainer_checks import device_list


def accelerator_device(accelerator: str, devices=None) -> torch.device:
    """The device this process's trainer puts the model on for ``trainer.accelerator`` and
    ``trainer.devices``: a GPU where CUDA is available and asked for (``gpu``, ``cuda``, or
    ``auto``), this process's own under DDP (``LOCAL_RANK``), else the CPU."""
    if str(accelerator) not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return torch.device("cpu")
    rank = int(os.environ.get("LOCAL_RANK", 0))
    # device ids (a list, or "0,2" as Lightning reads a string with commas) are taken by the
    # process's position among them; a count (or "auto", -1) takes the first devices in order
    chosen = device_list(devices)
    return torch.device("cuda", chosen[rank] if chosen else rank)


@contextlib.contextmanager
def on_accelerator(trainer, *modules: nn.Module) -> Iterator[torch.device]:
    """Move ``modules`` to the fit's device and autocast to ``trainer.precision`` while inside;
    yields the device (inputs go there), and puts the modules back where they were afterwards
    (the pipeline hands them on as it got them)."""
    from ..search import autocast_dtype

    device = accelerator_device(trainer.accelerator, trainer.devices)
    homes = [next(m.parameters()).device for m in modules]
    dtype = autocast_dtype(trainer.precision)
    precision = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        for m in modules:
            m.to(device)
        with precision:
            yield device
    finally:
        for m, home in zip(modules, homes):
            m.to(home)
