"""What a prune run works on, assembled once from the run spec: the data's splits, the dense
network, the calibration subset with its data module, and the student. This is where the spec's
data, model and calibration settings are read; the method's parts then get objects (a
:class:`~unipts.methods.Job`), not the spec.

The command builds the data and the dense network from the spec (:class:`FromSpec`); a Python
caller hands them over (:class:`Given`). Everything that can refuse the run (a calibration size
larger than the data, a network whose masks would not reach its forward, an allocation that does
not fit it) is checked before the dense network is loaded or pre-trained.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..common import OptionError, UniptsError
from .errors import engine_errors

if TYPE_CHECKING:
    from torch import nn

    from ..data import Splits
    from ..lightning import CalibrationDataModule
    from ..spec import PruneSpec

log = logging.getLogger("unipts")

#: the metrics of a run that has no evaluation images (a Python caller gave none)
UNSCORED = {"top1": None, "top5": None}


@dataclass
class Inputs:
    """The assembled run: the splits (evaluation split included), the dense network and where it
    came from, its scores, the calibration indices and data module, and the student (a masked copy
    of the dense network, all masks still ones)."""

    splits: Splits
    dense: nn.Module
    dense_source: str
    dense_metrics: dict
    indices: list[int]
    data: CalibrationDataModule
    student: nn.Module


class FromSpec:
    """The data set and the dense network the spec names (``data=``, ``dense_ckpt`` or the
    data set's pre-training)."""

    loggers: tuple = ()  # Lightning loggers added to the spec's

    def splits(self, spec: PruneSpec) -> Splits:
        from .builders import build_splits

        return build_splits(spec.data)

    def network(self, spec: PruneSpec, splits: Splits) -> nn.Module:
        """The untrained network, to check before any work."""
        from .builders import build_network

        return build_network(spec, splits)

    def dense(self, spec: PruneSpec, splits: Splits) -> tuple[nn.Module, str]:
        from .dense import obtain_dense

        return obtain_dense(spec, splits)  # trained on the labelled split where it pre-trains


@dataclass
class Given(FromSpec):
    """What a Python caller hands over instead of what the spec would build: the dense network
    (used as it is: the student is a copy), the data's splits (None: the spec's data set's;
    ``eval`` None: nothing to score top-1 on) and Lightning loggers added to the spec's."""

    given_dense: nn.Module
    given_splits: Splits | None = None
    loggers: list = field(default_factory=list)
    source: str = "given"  # where the dense network came from, as the summary's dense_ckpt

    def splits(self, spec: PruneSpec) -> Splits:
        return self.given_splits if self.given_splits is not None else super().splits(spec)

    def network(self, spec: PruneSpec, splits: Splits) -> nn.Module:
        return copy.deepcopy(self.given_dense)

    def dense(self, spec: PruneSpec, splits: Splits) -> tuple[nn.Module, str]:
        """In the memory layout the command would give it."""
        import torch

        dense = self.given_dense
        return (dense.to(memory_format=torch.channels_last) if spec.runtime.channels_last else dense), self.source


def assemble(spec: PruneSpec, source: FromSpec, resume: Path | None) -> Inputs:
    """The run's inputs, checked before the dense network is loaded or trained; ``resume``: the
    checkpoint a resumed fine-tune continues from (its calibration subset must be this one)."""
    method = spec.method
    splits = _labelled_splits(spec, source)
    dense, dense_source = source.dense(spec, splits)
    splits = _calibration_splits(spec, splits)
    indices = _calibration_subset(spec, splits, resume)
    from ..lightning import CalibrationDataModule

    data = CalibrationDataModule(splits, indices, spec.data.batch_size, spec.data.eval_batch_size,
                                 spec.data.num_workers, seed=spec.seed)
    dense_metrics = _score_dense(spec, dense, data, dense_source)
    student = _masked_network(spec, copy.deepcopy(dense), method.srste_decay())
    from ..sparse.nm import log_pattern

    log_pattern(student)
    return Inputs(splits, dense, dense_source, dense_metrics, indices, data, student)


# -- data -------------------------------------------------------------------------------------
def _labelled_splits(spec: PruneSpec, source: FromSpec) -> Splits:
    """The data set's splits (or the caller's), with ``eval_split=val``'s held-out images as the
    evaluation split; ``calib.size`` and the network are checked against them."""
    from ..data import hold_out_validation

    splits = source.splits(spec)
    if spec.eval_split == "val":
        with engine_errors():
            splits = hold_out_validation(splits, spec.validation.size, spec.validation.seed)
        log.info("evaluating on %d held-out training images (eval_split=val), not on the test split",
                 spec.validation.size)
    if spec.calib.root is None:
        _check_calib_size(spec, len(splits.train_labels))
    _check_network(spec, source, splits)
    return splits


def _calibration_splits(spec: PruneSpec, splits: Splits) -> Splits:
    """With ``calib.root``, its unlabeled images take the training split's place for calibration."""
    if spec.calib.root is None:
        return splits
    from ..data import unlabeled_calibration

    splits = unlabeled_calibration(spec.calib.root, splits)
    _check_calib_size(spec, len(splits.train_labels))
    return splits


def _check_calib_size(spec: PruneSpec, available: int) -> None:
    size = spec.method.calibration_size()
    if size is not None and size > available:
        where = "calib.root" if spec.calib.root is not None else "the training split"
        raise UniptsError(f"calib.size: {size} is larger than {where} ({available} images); valid: 1..{available}")


def _calibration_subset(spec: PruneSpec, splits: Splits, resume: Path | None) -> list[int]:
    """The calibration indices; when resuming, the ones saved beside the checkpoint, which must
    be the ones this configuration draws."""
    from ..data import calibration_indices

    calib, size = spec.calib, spec.method.calibration_size()
    size = len(splits.train_labels) if size is None else size
    indices = calibration_indices(splits.train_labels, size, calib.seed, calib.balanced)
    if resume is not None:
        saved_file = resume.parent.parent / "calib_indices.json"
        if saved_file.is_file():
            saved = json.loads(saved_file.read_text())
            if saved != indices:
                raise UniptsError(f"calib.size/calib.seed/calib.balanced: {saved_file} holds a different calibration "
                                  f"subset ({len(saved)} images) than this configuration draws ({len(indices)}); "
                                  "resume with the original run's calib settings")
            log.info("resume: reusing the calibration subset in %s", saved_file)
            indices = saved
    return indices


# -- networks ---------------------------------------------------------------------------------
def _check_network(spec: PruneSpec, source: FromSpec, splits: Splits) -> None:
    """The network must be maskable as ``model.exclude`` asks, its masks must reach its forward, and
    the allocation must fit it and ``sparsity.target`` (an ``allocation=table`` file names layers),
    before the dense model is loaded or trained."""
    import torch

    with torch.random.fork_rng(devices=[]):  # the run draws the same random numbers with or without the check
        network = _masked_network(spec, source.network(spec, splits))
        _log_unmaskable(network)
        _check_masks_reach_forward(spec, network, splits)
        spec.allocation.check_network(network, spec.sparsity.target)
        if spec.method.pruner is not None:
            spec.method.pruner.check_network(network)


def _masked_network(spec: PruneSpec, network: nn.Module, srste_decay: float | None = None) -> nn.Module:
    """``network`` sparsified as the run asks (:func:`unipts.sparse.sparsify`)."""
    from ..sparse import sparsify

    kwargs = {} if srste_decay is None else {"srste_decay": srste_decay}
    try:
        return sparsify(network, exclude=list(spec.model.exclude), pattern=spec.sparsity.pattern, **kwargs)
    except OptionError:  # its message names the option already
        raise
    except ValueError as exc:  # an attention it cannot mask as asked
        raise UniptsError(f"model.exclude: {exc}") from exc


def _log_unmaskable(network: nn.Module) -> None:
    from ..sparse import unmaskable_layers

    skipped = unmaskable_layers(network)
    if skipped:
        log.warning("model: %d Conv2d/Linear layer(s) of a subclass with a forward of its own (%s) stay dense and are "
                    "not counted in the sparsity: unipts masks plain Conv2d, Linear and MultiheadAttention only",
                    len(skipped), ", ".join(sorted(set(skipped.values()))))


def _check_masks_reach_forward(spec: PruneSpec, network: nn.Module, splits: Splits) -> None:
    """One forward pass on a training image: a network that reads a masked weight itself (not
    through its layer) would compute with the dense weight; it is refused, naming the layers."""
    from ..sparse import exclude_patterns, unmasked_weight_reads
    from ..sparse.probe import describe_unmasked_reads

    image = splits.train_plain[0][0].unsqueeze(0)
    device = next(network.parameters()).device  # a caller's network may sit on its accelerator
    try:
        found = unmasked_weight_reads(network, image.to(device))
    except Exception as exc:  # noqa: BLE001 - whatever fails here fails on every batch of the run
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no detail"
        raise UniptsError(f"model: {spec.model.name} cannot run on data={spec.data.name}'s {tuple(image.shape[1:])} "
                          f"images ({type(exc).__name__}: {first})") from exc
    if found:
        patterns = [*spec.model.exclude, *exclude_patterns(sorted(found))]
        raise UniptsError(f"model: {describe_unmasked_reads(found)}; keep them dense with "
                          f"model.exclude='[{','.join(patterns)}]'")


def _score_dense(spec: PruneSpec, dense: nn.Module, data: CalibrationDataModule, source: str) -> dict:
    from .steps import evaluate_network

    if data.splits.eval is None:
        log.info("dense model (%s): no evaluation images given, top-1 not measured", source)
        return UNSCORED
    metrics = evaluate_network(spec, dense, data.splits.num_classes, data)
    log.info("dense model (%s): top-1 %.4f", source, metrics["top1"])
    return metrics
