"""Masked Conv2d/Linear layers: the mask and the layer's target sparsity are buffers.

The forward pass uses ``W * M``. The backward pass is straight-through: every weight, pruned
or kept, receives the full gradient, and pruned weights get the extra SR-STE decay
``lambda * (1 - M) * W``. That is what lets a pruned weight grow back when dynamic sparse
training recomputes masks from magnitudes.

Attention. ``nn.MultiheadAttention`` never calls its ``out_proj``'s forward: it hands its packed
q/k/v weight ``in_proj_weight`` and ``out_proj.weight`` to a functional kernel itself. So it is
masked as a whole: :class:`MaskedMultiheadAttention` is a masked layer whose weight is
``in_proj_weight`` (state_dict ``<name>.in_proj_weight`` beside ``<name>.mask``), its ``out_proj``
a masked layer of its own, and its forward hands torch's attention the masked tensors in the
parameters' places. Any other module that reads a masked layer's weight itself (torchvision's
Swin, timm's BEiT) would compute with the dense weight: :mod:`unipts.sparse.probe` finds those.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..common import OptionError
from .pattern import is_eligible, parse_pattern, row_length, violations

DEFAULT_SRSTE_DECAY = 5e-5


class _MaskedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        if ctx.decay:
            grad = grad + ctx.decay * (1 - mask) * weight
        return grad, None, None


class MaskedLayer:
    """Mixin for a Conv2d/Linear whose effective weight is ``weight * mask``.

    Not a module of its own: :func:`sparsify` changes an existing layer's class in place, so
    parameter names, initialisation and loaded weights are untouched and the state_dict only
    gains ``mask`` and ``target_sparsity``.
    """

    mask: torch.Tensor
    target_sparsity: torch.Tensor
    srste_decay: float
    #: The N:M pattern ``(n, m)`` every mask of this layer follows, or ``None`` (unstructured);
    #: see :mod:`unipts.sparse.nm`. A plain attribute: the configuration sets it again on resume.
    nm: tuple[int, int] | None = None

    def _init_masking(self, srste_decay: float, nm: tuple[int, int] | None = None) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=self.weight.dtype))
        self.register_buffer("target_sparsity", torch.zeros((), dtype=torch.float64))
        self.srste_decay = srste_decay
        self.nm = nm

    def masked_weight(self) -> torch.Tensor:
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return _MaskedWeight.apply(self.weight, self.mask, self.srste_decay)
        return self.weight * self.mask

    @property
    def n_zeros(self) -> int:
        """Number of pruned weights according to the mask."""
        return int(self.mask.numel() - self.mask.count_nonzero())

    def extra_repr(self) -> str:
        nm = f", pattern={self.nm[0]}:{self.nm[1]}" if self.nm is not None else ""
        own = f"sparsity={float(self.target_sparsity):.4f}{nm}"
        return ", ".join(part for part in (super().extra_repr(), own) if part)


class MaskedConv2d(MaskedLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


class MaskedLinear(MaskedLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class MaskedOutProjection(MaskedLinear, NonDynamicallyQuantizableLinear):
    """An attention's ``out_proj``, masked: the attention reads its masked weight
    (:class:`MaskedMultiheadAttention`); called on its own it is a :class:`MaskedLinear`."""


@contextlib.contextmanager
def _parameters_replaced(replacements: list[tuple[nn.Module, str, torch.Tensor]]) -> Iterator[None]:
    """Each ``module.<name>`` reads as the given tensor inside the block, the parameter again after it.

    Written into ``_parameters`` directly: ``setattr`` accepts only a Parameter there, and the
    tensor is a function of the parameter (``weight * mask``) through which gradients reach it.
    """
    saved = [(module, name, module._parameters[name]) for module, name, _ in replacements]
    try:
        for module, name, tensor in replacements:
            module._parameters[name] = tensor
        yield
    finally:
        for module, name, parameter in saved:
            module._parameters[name] = parameter


class MaskedMultiheadAttention(MaskedLayer, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose packed q/k/v projection ``in_proj_weight`` is the masked weight.

    torch's forward (the reference kernel in training, the fused one in inference) is run as it
    is, with ``in_proj_weight`` and, when masked, ``out_proj.weight`` read as ``weight * mask``
    for the duration of the call.
    """

    @property
    def weight(self) -> torch.Tensor:
        """The prunable weight under the name the engine uses for every masked layer."""
        return self.in_proj_weight

    def forward(self, *args, **kwargs):
        replacements = [(self, "in_proj_weight", self.masked_weight())]
        if isinstance(self.out_proj, MaskedLayer):
            replacements.append((self.out_proj, "weight", self.out_proj.masked_weight()))
        with _parameters_replaced(replacements):
            return super().forward(*args, **kwargs)


_MASKED_CLASS = {
    nn.Conv2d: MaskedConv2d,
    nn.Linear: MaskedLinear,
    NonDynamicallyQuantizableLinear: MaskedOutProjection,
    nn.MultiheadAttention: MaskedMultiheadAttention,
}
_PLAIN_CLASS = {masked: plain for plain, masked in _MASKED_CLASS.items()}
#: Masked layers whose weight torch's attention reads itself, not through the layer's forward.
ATTENTION_LAYERS = (MaskedMultiheadAttention, MaskedOutProjection)
#: The state_dict name of a prunable module's weight, by module kind (see :func:`weight_name`).
WEIGHT_NAMES = ("weight", "in_proj_weight")


def weight_name(module: nn.Module) -> str:
    """The name of the weight a prunable module is pruned on: ``in_proj_weight`` for an attention."""
    return "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"


def prunable_weight(module: nn.Module) -> torch.Tensor:
    return getattr(module, weight_name(module))


def is_prunable(module: nn.Module) -> bool:
    """A plain Conv2d/Linear, an attention with a packed q/k/v projection, or a masked layer.

    An attention with separate q/k/v weights (``kdim``/``vdim`` other than ``embed_dim``) is not:
    :func:`sparsify` refuses it unless it is excluded."""
    if isinstance(module, MaskedLayer):
        return True
    if type(module) is nn.MultiheadAttention:
        return module.in_proj_weight is not None
    return type(module) in _MASKED_CLASS


_BLOCK_NUMBER = re.compile(r"^\d+$|(?<=_)\d+$")  # "3" in blocks.3, "0" in encoder_layer_0


def exclude_patterns(names: Iterable[str]) -> list[str]:
    """Fnmatch patterns covering ``names``, block numbers generalised (``blocks.3.attn.qkv`` ->
    ``blocks.*.attn.qkv``, ``encoder_layer_0`` -> ``encoder_layer_*``): a short ``exclude`` for
    the same layer in every block."""
    patterns: dict[str, None] = {}
    for name in names:
        patterns[".".join(_BLOCK_NUMBER.sub("*", part) for part in name.split("."))] = None
    return list(patterns)


def _attention_problems(model: nn.Module, excluded: Callable[[str], bool]) -> list[str]:
    """Attentions :func:`sparsify` cannot mask as asked: ones with separate q/k/v weights, and ones
    kept dense whose ``out_proj`` is not (the attention would read that dense weight itself)."""
    half_kept, unpacked = [], []
    for name, module in model.named_modules():
        if type(module) is not nn.MultiheadAttention:
            continue
        if excluded(name) and not excluded(f"{name}.out_proj"):
            half_kept.append(name)
        elif not excluded(name) and module.in_proj_weight is None:
            unpacked.append(name)
    problems = []
    if half_kept:
        problems.append(f"{some_of(half_kept)} (nn.MultiheadAttention) kept dense but not its out_proj, whose weight "
                        f"it reads itself; keep both dense: {[p + '*' for p in exclude_patterns(half_kept)]}")
    if unpacked:
        problems.append(f"{some_of(unpacked)} (nn.MultiheadAttention) has separate q/k/v weights (kdim/vdim other "
                        f"than embed_dim), which unipts cannot mask; keep it dense: "
                        f"{[p + '*' for p in exclude_patterns(unpacked)]}")
    return problems


def some_of(names: list[str]) -> str:
    """``"a"``, or ``"a and 3 more"``: a list named in an error line of bounded length."""
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def sparsify(
    model: nn.Module,
    exclude: Iterable[str] = (),
    srste_decay: float = DEFAULT_SRSTE_DECAY,
    pattern: str | tuple[int, int] | None = None,
) -> nn.Module:
    """Turn every Conv2d/Linear/MultiheadAttention of ``model`` into its masked version, in place.

    ``exclude`` holds fnmatch patterns of module names (``"fc"``, ``"layer1.*"``) to keep dense.
    ``pattern`` is the sparsity pattern every mask will follow: ``None``/``"unstructured"``, or
    N:M (``"2:4"`` or ``(2, 4)``, see :mod:`unipts.sparse.nm`). Masks start all-ones; an
    allocation rule then sets them (:func:`unipts.sparse.nm.log_pattern` tells what N:M does to them).

    An ``nn.MultiheadAttention`` named ``attn`` becomes two masked layers, ``attn`` (its packed
    q/k/v projection) and ``attn.out_proj``; keeping ``attn`` dense keeps both (``exclude=["attn*"]``).
    Subclasses of Conv2d/Linear with a forward of their own stay dense (:func:`unmaskable_layers`).
    Raises ValueError for an attention it cannot mask as asked, naming it.
    """
    nm = parse_pattern(pattern)
    patterns = list(exclude)

    def excluded(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    problems = _attention_problems(model, excluded)
    if problems:
        raise ValueError("; ".join(problems))
    prunable = {name: module for name, module in model.named_modules() if is_prunable(module)}  # masked already or not
    _check_exclude(patterns, list(prunable))
    kept = {name: module for name, module in prunable.items() if not excluded(name)}
    if not kept:
        raise OptionError(f"model.exclude: {patterns} leaves no Conv2d or Linear layer to prune; "
                          f"its prunable layers: {_some(list(prunable))}")
    if nm is not None:  # checked before any layer changes: a refused model is left as it was
        _check_carried(kept, nm)
    for module in (m for m in kept.values() if type(m) in _MASKED_CLASS):  # not masked yet
        module.__class__ = _MASKED_CLASS[type(module)]
        module._init_masking(srste_decay, nm)
    return model


def _some(names: list[str], limit: int = 8) -> str:
    """``a, b, c, ... and 12 more``: enough names for a message to show what is valid."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_exclude(patterns: list[str], names: list[str]) -> None:
    """Every exclusion pattern must name a layer: one that matches nothing (a typo, a block's name
    without ``.*``) would otherwise prune the layer it meant to keep, without a word."""
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in names)]
    if unmatched:
        raise OptionError(f"model.exclude: {', '.join(map(repr, unmatched))} match{'es' if len(unmatched) == 1 else ''} "
                          f"no Conv2d or Linear layer (whole names, with * and ?, e.g. 'layer1.*'); its prunable "
                          f"layers: {_some(names)}")


def _check_carried(layers: dict[str, nn.Module], nm: tuple[int, int]) -> None:
    """At least one of the layers to mask must carry the N:M pattern: where none can, every layer
    would stay dense and the run would end at sparsity 0 (an ineligible layer among eligible ones
    stays dense, by design)."""
    n, m = nm
    if any(is_eligible(layer.weight, m) for layer in layers.values()):
        return
    lengths = {name: row_length(layer.weight) for name, layer in layers.items()}
    shown = _some([f"{name} {length}" for name, length in lengths.items()])
    divisors = sorted({d for length in lengths.values() for d in range(2, min(length, 16) + 1) if length % d == 0})
    example = "2:4" if 4 in divisors else f"1:{divisors[0]}" if divisors else None
    valid = f"an M (up to 16) among {divisors}, e.g. {example}" if example else "none: no layer has more than one input"
    raise OptionError(f"sparsity.pattern: {n}:{m}: no layer of the network can carry it (a layer needs a "
                      f"multiple of {m} inputs per output; here: {shown}); valid: {valid}")


def masked_layers(model: nn.Module) -> Iterator[tuple[str, MaskedLayer]]:
    """The masked layers of a model, in module order, with their names."""
    for name, module in model.named_modules():
        if isinstance(module, MaskedLayer):
            yield name, module


@torch.no_grad()
def fold_masks_(model: nn.Module) -> None:
    """Zero the pruned weights themselves, so the plain weights carry the sparsity.

    A layer with an N:M pattern whose mask breaks it (set by hand, not by :func:`set_masks_` or
    :func:`remask_from_magnitude_`) is an error: folding would write the broken pattern into the
    weights."""
    for name, layer in masked_layers(model):
        if layer.nm is not None and is_eligible(layer.weight, layer.nm[1]):
            bad = violations(layer.mask, *layer.nm)
            if bad:
                raise RuntimeError(f"{name}: {bad} groups of its mask keep more than {layer.nm[0]} of "
                                   f"{layer.nm[1]} weights; its pattern is {layer.nm[0]}:{layer.nm[1]}")
        layer.weight.mul_(layer.mask)


def unsparsify(model: nn.Module) -> nn.Module:
    """Fold masks into weights and turn masked layers back into plain Conv2d/Linear, in place."""
    fold_masks_(model)
    for _, layer in list(masked_layers(model)):
        del layer._buffers["mask"], layer._buffers["target_sparsity"]
        del layer.srste_decay
        layer.__dict__.pop("nm", None)
        layer.__class__ = _PLAIN_CLASS[type(layer)]
    return model


def unmaskable_layers(model: nn.Module) -> dict[str, str]:
    """Conv2d/Linear layers :func:`sparsify` leaves dense because they are subclasses with a forward
    of their own (timm's ``StdConv2d``, ``Conv2dSame``), which masking would bypass: name -> class."""
    return {name: type(module).__name__ for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not is_prunable(module)}
