"""Networks of torchvision and timm by their own names (``model=torchvision``/``model=timm``).

They are built without weights: unipts never downloads. A trained network's weights come from a
local file through ``dense_ckpt=PATH`` (a state_dict as torchvision's and timm's models save it).
timm is an optional dependency (``pip install 'unipts[timm]'``), imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache

from torch import nn

from ..common import UniptsError

TORCHVISION_NAMES = "python -c 'import torchvision; print(torchvision.models.list_models(module=torchvision.models))'"
TIMM_NAMES = "python -c 'import timm; print(timm.list_models())'"
TIMM_MISSING = "model=timm needs timm, which is not installed: pip install 'unipts[timm]'"
# The builders' arguments that fetch or load weights of their own.
WEIGHT_ARGUMENTS = ("weights", "weights_backbone", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                    "checkpoint_path")


def _refuse_unnamed(name, library: str, listing: str, key: str) -> None:
    if name is None or name == "???":  # OmegaConf's mark of a value the config leaves to the command line
        raise UniptsError(f"{key}.name: required with {key}={library}: {key}.name=<a {library} model>; list them "
                          f"with: {listing}")


def _refuse_weight_arguments(options: Mapping, key: str) -> None:
    for name in WEIGHT_ARGUMENTS:
        if options.get(name) not in (None, False):
            raise UniptsError(f"{key}.{name}: unipts builds the network without weights and never downloads; give a "
                              "local weights file with dense_ckpt=PATH")


@cache
def torchvision_names() -> frozenset[str]:
    import torchvision

    # module=torchvision.models: the classifiers only (not detection, segmentation, video...)
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def check_torchvision(name, options: Mapping, key: str = "model") -> None:
    _refuse_unnamed(name, "torchvision", TORCHVISION_NAMES, key)
    if name not in torchvision_names():
        raise UniptsError(f"{key}.name: {name!r} is not a torchvision classification model; list them with: "
                          f"{TORCHVISION_NAMES}")
    _refuse_weight_arguments(options, key)


def torchvision_model(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    """torchvision's classifier ``name`` with ``num_classes`` outputs and random weights;
    ``options`` are its builder's arguments (``image_size`` of a ViT, ``dropout``...)."""
    import torchvision

    check_torchvision(name, options)
    if in_channels != 3:  # torchvision's classifiers have an RGB stem, and no argument to change it
        raise UniptsError(f"model: torchvision's {name} takes 3 input channels, the data has {in_channels}")
    return _called(getattr(torchvision.models, name), f"torchvision's {name}", weights=None,
                   num_classes=num_classes, **options)


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise UniptsError(TIMM_MISSING) from exc
    return timm


def check_timm(name, options: Mapping, key: str = "model") -> None:
    _refuse_unnamed(name, "timm", TIMM_NAMES, key)
    timm = _timm()
    # a pretrained tag (vit_tiny_patch16_224.augreg_in21k) names the architecture it belongs to
    if not isinstance(name, str) or not timm.is_model(name):
        raise UniptsError(f"{key}.name: {name!r} is not a timm model; list them with: {TIMM_NAMES}")
    _refuse_weight_arguments(options, key)


def timm_model(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    """timm's ``name`` with ``num_classes`` outputs, ``in_channels`` input channels (timm adapts
    the stem) and random weights; ``options`` are ``timm.create_model``'s (``img_size``...)."""
    check_timm(name, options)
    return _called(_timm().create_model, f"timm's {name}", name, pretrained=False, num_classes=num_classes,
                   in_chans=in_channels, **options)


def _called(builder: Callable[..., nn.Module], what: str, *args, **kwargs) -> nn.Module:
    try:
        return builder(*args, **kwargs)
    except TypeError as exc:  # an option the builder does not take
        raise UniptsError(f"model: {what} refused its arguments: {exc}") from exc


@dataclass(frozen=True)
class Library:
    """A library of networks by name: ``check`` refuses a name or option before any work,
    ``build(name, num_classes, in_channels, **options)`` makes the network."""

    check: Callable[..., None]
    build: Callable[..., nn.Module]


LIBRARIES = {"torchvision": Library(check_torchvision, torchvision_model), "timm": Library(check_timm, timm_model)}


def library(name, key: str = "model") -> Library:
    """The library ``model.library`` names."""
    if name not in LIBRARIES:
        raise UniptsError(f"{key}.library: unknown library {name!r}; valid: {sorted(LIBRARIES)}")
    return LIBRARIES[name]
