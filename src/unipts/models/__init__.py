"""Model factory: networks by name, torchvision's and timm's by theirs (:mod:`.zoo`), or any
``nn.Module`` through a Hydra ``_target_``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..common import UniptsError
from .cifar_mobilenet import cifar_mobilenet_v2
from .cifar_resnet import CifarResNet
from .digits_net import DigitsNet
from . import zoo
from .zoo import torchvision_model

# model=resnet18 is model=torchvision model.name=resnet18: the same builder, the same state_dict keys.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "digits_net": DigitsNet,
    "resnet20": partial(CifarResNet, 20),
    "resnet32": partial(CifarResNet, 32),
    "resnet56": partial(CifarResNet, 56),
    "resnet18": partial(torchvision_model, "resnet18"),
    "resnet50": partial(torchvision_model, "resnet50"),
    "mobilenet_v2": partial(torchvision_model, "mobilenet_v2"),
    "mobilenet_v2_cifar": cifar_mobilenet_v2,
}


def architecture(cfg: Mapping) -> str:
    """What a model config builds, as one comparable string: its ``_target_``, else its name with
    its library (``torchvision resnet18`` for model=resnet18 and model=torchvision
    model.name=resnet18 alike, ``timm resnet18`` for timm's)."""
    if cfg.get("_target_"):
        return str(cfg["_target_"])
    name = cfg.get("name")
    preset = MODELS.get(name) if isinstance(name, str) else None
    library = cfg.get("library") or ("torchvision" if getattr(preset, "func", None) is torchvision_model else None)
    return f"{library} {name}" if library else str(name)


def build_model(cfg: Mapping, num_classes: int, in_channels: int) -> nn.Module:
    """A freshly initialised network from a model config.

    ``cfg`` is ``{name: resnet20, ...}`` (one of :data:`MODELS`; extra keys are passed on),
    ``{library: torchvision|timm, name: <its name>, ...}`` (:data:`~unipts.models.zoo.LIBRARIES`),
    or a Hydra node with ``_target_`` naming any callable that returns an ``nn.Module``.
    """
    cfg = dict(cfg)
    if cfg.get("_target_"):
        from hydra.utils import instantiate

        kwargs = {k: v for k, v in cfg.items() if k not in ("name", "exclude")}
        model = instantiate(kwargs)
        if not isinstance(model, nn.Module):
            raise UniptsError(f"model._target_: {cfg['_target_']} returned {type(model).__name__}, not an nn.Module")
        return model
    name = cfg.pop("name", None)
    cfg.pop("exclude", None)
    library = cfg.pop("library", None)
    if library is not None:
        return zoo.library(library).build(name, num_classes=num_classes, in_channels=in_channels, **cfg)
    if name not in MODELS:
        raise UniptsError(f"model.name: unknown model {name!r}; valid: {sorted(MODELS)} or a model._target_")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **cfg)


def unwrap_state_dict(obj, path: Path, key: str = "dense_ckpt") -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UniptsError(f"{key}: {path} holds no state_dict of tensors")
    # A unipts fine-tune checkpoint holds teacher and student; the student is the model.
    for prefix in ("student.", "model.", "module."):
        if obj and all(k.startswith(prefix) or k.startswith("teacher.") for k in obj) and any(
            k.startswith(prefix) for k in obj
        ):
            return {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
    return obj


def _first_line(message: str) -> str:
    """The informative line of a (multi-line) torch.load error: what the unpickler choked on."""
    if "WeightsUnpickler error:" in message:
        message = message.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[0][:300] if lines else "no detail"


def load_checkpoint_object(path: str | Path, key: str = "dense_ckpt"):
    """A checkpoint file's contents, loaded as data (``weights_only=True``), never as code."""
    path = Path(path)
    if not path.is_file():
        raise UniptsError(f"{key}: no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise UniptsError(f"{key}: {path} is not a readable weights-only checkpoint "
                          f"({type(exc).__name__}: {_first_line(str(exc))})") from exc


def read_state_dict(path: str | Path, key: str = "dense_ckpt") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (:func:`load_checkpoint_object`)."""
    return unwrap_state_dict(load_checkpoint_object(path, key), Path(path), key)


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def describe_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """``"3 tensors hold NaN or infinity: a, b, c"``, or None when every tensor is finite."""
    bad = non_finite_tensors(state)
    return f"{len(bad)} tensor(s) hold NaN or infinity: {_preview(bad)}" if bad else None


def _preview(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, key: str = "dense_ckpt") -> None:
    """Load ``state`` into ``model`` strictly; a mismatch names the keys that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped: {_preview(misshaped)}")
    if problems:
        raise UniptsError(f"{key}: {path} does not fit model {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state)
