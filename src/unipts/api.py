"""``unipts.prune``: the prune pipeline of ``unipts-prune``, called from Python with a network and
images instead of a configuration tree.

The call composes the same configuration the command would (same presets, same defaults, the
same checks and one-line refusals, raised as :class:`~unipts.UniptsError`), with the caller's
network and images in place of ``model=`` and ``data=``, and runs the same pipeline
(:func:`unipts.pipeline.prune.run`): the two cannot drift apart.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import CONFIG_DIR, UniptsError


@dataclass
class PruneResult:
    """What :func:`prune` returns."""

    model: nn.Module  #: the sparse network: a plain module (masks folded into its weights, no mask buffers)
    summary: dict  #: the run's ``summary.json`` (top-1, sparsity, per-layer table, wall times, configuration)
    run_dir: Path  #: where the run wrote its checkpoints, logs and summary
    sparse_keys: list[str]  #: the state_dict keys of the pruned weights
    input_shape: tuple[int, ...]  #: one image's shape, ``(channels, height, width)``

    @property
    def layers(self) -> list[dict]:
        """Per-layer sparsities: ``{"name", "numel", "zeros", "sparsity"}`` for every pruned layer."""
        return self.summary["layers"]

    def export(self, out_dir: str | Path | None = None, *, onnx: bool = True, exporter: str = "torchscript",
               batch: int = 8) -> dict:
        """Write ``model.pt``, the compressed ``model.sparse.pt`` and ``model.onnx`` (checked against
        PyTorch) to ``out_dir`` (default: ``<run_dir>/export``), as ``unipts-export`` does; returns
        its report (sizes, sparsity, ONNX checks)."""
        from .export import EXPORTERS, example_batch, export_network

        if exporter not in EXPORTERS:
            raise UniptsError(f"exporter: unknown exporter {exporter!r}; valid: {list(EXPORTERS)}")
        out = Path(out_dir) if out_dir is not None else self.run_dir / "export"
        network = copy.deepcopy(self.model).cpu()  # the export stores its zeros as +0.0, in place
        return export_network(network, out, example_batch(self.input_shape, batch), self.sparse_keys, onnx=onnx,
                              exporter=exporter)


def prune(model: nn.Module, calibration: Any, *, sparsity: float, method: str | None = None,
          evaluation: Any = None, calib_size: int | None = None, seed: int = 0, run_dir: str | Path | None = None,
          overrides: Sequence[str] = (), trainer: Mapping[str, Any] | None = None,
          loggers: Sequence[Any] = ()) -> PruneResult:
    """Make ``model`` sparse at the global ``sparsity`` with a few calibration images.

    ``model``: the dense network (left untouched: the run works on a copy).
    ``calibration``: the images to calibrate on: a ``Dataset`` whose items are ``(image, label)``
    or a bare image (a ``C x H x W`` float tensor, normalised as the network expects), a
    ``DataLoader`` over one, a tensor of images or a pair ``(images, labels)``. Labels are needed
    only by methods that train on them (``method=gmp_full``) and for a top-1 search fitness. Or
    the name of a data set of the configuration tree (``"digits"``, ``"cifar10"`` with
    ``overrides=["data.root=..."]``): then its training split is the pool and its test split the
    evaluation, as on the command line.
    ``method``: a preset (``unipts``, ``unipts_erk``, ``magnitude``, ``pot``, ``sparsegpt``,
    ``wanda``, ``gmp_full``); default ``unipts-prune``'s.
    ``evaluation``: labelled images (same forms) to measure top-1 on; without them the summary's
    ``top1`` is None and the fine-tune does not validate.
    ``calib_size``: images drawn from ``calibration`` (default: all that are given; for a named
    data set, its ``calib.size``).
    ``overrides``: any other setting, in the command line's syntax (``["finetune.epochs=10",
    "allocation=erk"]``). ``trainer``: Lightning ``Trainer`` arguments (``{"accelerator": "gpu",
    "precision": "bf16-mixed"}``). ``loggers``: Lightning loggers, besides the configured ones.
    ``run_dir``: where the run writes (default: a new ``outputs/<date>/<time>`` folder).

    Returns a :class:`PruneResult`. A setting that cannot work raises :class:`~unipts.UniptsError`
    naming it, before any work.
    """
    from .console import third_party_quieted
    from .pipeline.prune import Given, run, start
    from .runs.record import record_start
    from .export import prunable_weight_keys
    from .sparse import masked_layers, unsparsify

    if not isinstance(model, nn.Module):
        raise UniptsError(f"model: a {type(model).__name__} is not a torch.nn.Module")
    _check_loggers(loggers)
    _check_preset("method", method, "method")
    dense = copy.deepcopy(model).cpu()
    splits = _given_splits(dense, calibration, evaluation)
    if splits is not None and calib_size is None:
        calib_size = len(splits.train_labels)
    settings = {"sparsity.target": sparsity, "seed": seed, "model.name": type(model).__name__,
                **({"calib.size": calib_size} if calib_size is not None else {})}
    data = "given" if splits is not None else calibration
    overrides = [*([f"method={method}"] if method else []), f"data={data}", "model=given", *overrides]
    spec = _spec(overrides, settings, trainer or {}, run_dir, splits)
    # a named data set's splits are built by the pipeline, as on the command line
    given = Given(dense, splits, list(loggers), source=f"{type(model).__name__} given to unipts.prune")
    with ExitStack() as held:
        # no Lightning banners in the caller's notebook (overrides=["runtime.verbose=true"] keeps them)
        held.enter_context(third_party_quieted(spec.runtime.verbose))
        try:
            resume = start(spec, held)
        except UniptsError as exc:  # the command's words for the run directory are hydra.run.dir
            raise UniptsError(str(exc).replace("hydra.run.dir", "run_dir")) from exc
        record_start(spec, hydra_job=False)
        outcome = run(spec, resume, given)
    masked = [name for name, _ in masked_layers(outcome.network)]
    network = unsparsify(outcome.network).to(memory_format=torch.contiguous_format)
    keys = prunable_weight_keys(network, only=masked)  # an attention's is its in_proj_weight
    # summary.json as written (non-finite values as null); DDP's other processes have none
    summary = json.loads((spec.run_dir / "summary.json").read_text()) if outcome.summary is not None else {}
    return PruneResult(network, summary, spec.run_dir, keys, outcome.input_shape)


def _given_splits(dense: nn.Module, calibration, evaluation):
    """The caller's images as splits, or None for a data set named in the configuration tree."""
    from .data.given import given_splits

    if not isinstance(calibration, str):
        return given_splits(calibration, evaluation, num_classes=_outputs(dense, calibration))
    _check_preset("data", calibration, "calibration")
    if evaluation is not None:
        raise UniptsError(f"evaluation: data set {calibration!r} brings its own evaluation images; leave it out")
    return None


def _spec(overrides: list[str], settings: dict, trainer: Mapping[str, Any], run_dir, splits):
    """The checked run spec of the composed configuration, with the run directory, and the checks
    only a Python caller's inputs need."""
    from .data import UNLABELED
    from .spec import build_prune_spec

    folder = Path(run_dir).expanduser().resolve() if run_dir is not None else _fresh_run_dir()
    cfg = _compose(overrides, {**settings, "paths.root": str(Path.cwd()), "paths.output_dir": str(folder)}, trainer)
    labelled = splits is None or bool((splits.train_labels != UNLABELED).all())
    spec = build_prune_spec(cfg, dense_given=True, labelled=labelled)
    if run_dir is None and _several_processes(spec.trainer):
        raise UniptsError("run_dir: required when the run spans several processes (trainer devices or num_nodes): "
                          "each process runs this script and all must write to one folder")
    if splits is not None and splits.eval is None and spec.checkpoint.monitor:
        raise UniptsError(f"checkpoint.monitor: {spec.checkpoint.monitor} is measured on evaluation images; give "
                          "evaluation= or leave checkpoint.monitor out")
    return spec


def _outputs(network: nn.Module, calibration) -> int:
    """The network's number of outputs (its classes), from one calibration image."""
    from .data.given import as_dataset, first_image

    image = first_image(as_dataset(calibration, "calibration"), "calibration")
    modes = {module: module.training for module in network.modules()}  # put back after: the run starts from them
    try:
        with torch.no_grad():
            out = network.eval()(image[None])
    except Exception as exc:  # noqa: BLE001 - whatever the network raises, the images do not fit it
        raise UniptsError(f"calibration: the network cannot take an image of shape {tuple(image.shape)} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    finally:
        for module, training in modes.items():
            module.training = training
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UniptsError(f"model: returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))} for a batch of "
                          "images; unipts prunes classifiers returning (batch, classes) logits")
    return int(out.shape[1])


def _several_processes(trainer) -> bool:
    """Whether Lightning will start more than this process (DDP on several devices or nodes)."""
    from .trainer_checks import device_list

    devices, nodes = trainer.devices, trainer.kwargs.get("num_nodes") or 1
    listed = device_list(devices)  # [0, 2] or "0,2"
    if listed is not None:
        return len(listed) > 1 or nodes > 1
    return devices == -1 or (isinstance(devices, int) and devices > 1) or nodes > 1


def _check_loggers(loggers: Sequence[Any]) -> None:
    from lightning.pytorch.loggers import Logger

    for i, logger in enumerate(loggers):
        if not isinstance(logger, Logger):
            raise UniptsError(f"loggers[{i}]: a {type(logger).__name__} is not a Lightning logger")


def _check_preset(group: str, name: str | None, key: str) -> None:
    """``name`` is one of the configuration tree's ``group`` presets (or None: the default)."""
    if name is None:
        return
    presets = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml") if p.stem != "given")
    if name not in presets:
        raise UniptsError(f"{key}: no {group} preset named {name!r}; valid: {', '.join(presets)}")


def _fresh_run_dir() -> Path:
    """``outputs/<date>/<time>`` under the working directory, as a command's default, never one
    that exists."""
    base = Path.cwd() / "outputs" / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def _compose(overrides: list[str], values: Mapping[str, Any], trainer: Mapping[str, Any]):
    """The ``prune`` configuration with ``overrides`` (command-line syntax), then ``values`` (dotted
    keys set as Python values, so paths and names need no quoting) and ``trainer`` merged in."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    outer = Singleton._instances.pop(GlobalHydra, None)  # a caller's own Hydra application keeps its state
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="unipts"):
            cfg = compose(config_name="prune", overrides=list(overrides))
        with open_dict(cfg):
            for key, value in values.items():
                OmegaConf.update(cfg, key, value, force_add=True)
            cfg.trainer = OmegaConf.merge(cfg.trainer, dict(trainer))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UniptsError(f"overrides: {str(exc).splitlines()[0]}") from exc
    finally:
        Singleton._instances.pop(GlobalHydra, None)
        if outer is not None:
            Singleton._instances[GlobalHydra] = outer
    return cfg
