"""Where a checkpoint came from: the model, data and class settings of the run that wrote it, so
that ``unipts-eval`` and ``unipts-export`` need not be told them again.

A run's settings are read from the checkpoint itself (``final.ckpt``'s ``unipts`` metadata:
``{"model": {...}, "data": name, "data_config": {...}}``), else from the run directory the
checkpoint sits in (``<run>/checkpoints/<name>.ckpt``): its ``.unipts/config.json`` (the resolved
configuration the run started with), else its ``summary.json``'s ``config``. A ``model=`` or
``data=`` on the command line still wins, and is checked against the run's; a bare state_dict
has no run to read, and needs both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..common import UniptsError

log = logging.getLogger("unipts")

METADATA_KEY = "unipts"  # the checkpoint entry holding the run's settings (JSON text)
GROUPS = ("model", "data")
PATH_KEYS = ("root", "class_index")  # data settings that are paths: relative ones are the run's cwd's


@dataclass
class Origin:
    """The settings of the run that wrote a checkpoint."""

    model: dict | None  # the resolved model config; None if nothing recorded it
    data: dict | None  # the resolved data config; None if only its name is known
    data_name: str | None
    source: str  # where they were read, for the log and for error messages

    def group(self, name: str) -> dict | None:
        return self.model if name == "model" else self.data

    def as_metadata(self) -> dict:
        """As the ``unipts`` entry of a checkpoint (with ``source``: where it was read)."""
        return {"model": self.model, "data": self.data_name, "data_config": self.data, "source": self.source}

    @classmethod
    def from_metadata(cls, meta: dict, path: Path) -> Origin:
        return cls(meta.get("model"), meta.get("data_config"), meta.get("data"), meta.get("source") or f"{path}'s metadata")


def checkpoint_metadata(config: dict) -> dict:
    """What a run writes into its final checkpoint (``unipts`` entry), from its resolved
    configuration: enough to rebuild and score the network without the run directory."""
    root = (config.get("paths") or {}).get("root")
    return {"model": config["model"], "data": config["data"]["name"],
            "data_config": _absolute_paths(config["data"], root)}


def _absolute_paths(data: dict, cwd: str | None) -> dict:
    """``data.root`` and ``data.class_index`` as absolute paths: a relative one was relative to the
    directory the run was started in (``paths.root``), which eval need not share."""
    data = dict(data)
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and cwd and not Path(value).expanduser().is_absolute():
            data[key] = str(Path(cwd) / value)
    return data


def read_metadata(obj: Any, path: Path) -> dict | None:
    """The ``unipts`` entry of a loaded checkpoint object, or None where it has none."""
    if not isinstance(obj, dict) or METADATA_KEY not in obj:
        return None
    try:
        meta = json.loads(obj[METADATA_KEY])
    except (TypeError, ValueError) as exc:
        raise UniptsError(f"checkpoint: {path} has unreadable unipts metadata ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise UniptsError(f"checkpoint: {path} has unipts metadata without a model config")
    return meta


def run_dir_config(path: Path) -> tuple[dict, Path] | None:
    """The resolved configuration of the run whose ``checkpoints/`` folder holds ``path``, and the
    file it was read from; None where the checkpoint does not sit in a run directory."""
    run_dir = path.resolve().parent.parent
    if path.resolve().parent.name != "checkpoints":
        return None
    for record in (run_dir / ".unipts" / "config.json", run_dir / "summary.json"):
        if not record.is_file():
            continue
        try:
            loaded = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # a damaged record: try the next one
        config = loaded.get("config", loaded) if record.name == "summary.json" else loaded
        if isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("data"), dict):
            return config, record
    return None


def find_origin(path: Path, meta: dict | None) -> Origin | None:
    """The run settings of the checkpoint at ``path`` whose ``unipts`` metadata is ``meta``."""
    if meta is not None and isinstance(meta.get("data_config"), dict):
        return Origin(meta["model"], meta["data_config"], meta.get("data"), f"{path}'s metadata")
    beside = run_dir_config(path)
    if beside is not None:
        config, record = beside
        data = _absolute_paths(config["data"], (config.get("paths") or {}).get("root"))
        model = meta["model"] if meta is not None else config["model"]
        return Origin(model, data, data.get("name"), str(record))
    if meta is not None:  # an older final.ckpt moved out of its run: the model and the data's name only
        return Origin(meta["model"], None, meta.get("data"), f"{path}'s metadata")
    return None


def run_metadata(path: Path, meta: dict | None) -> dict | None:
    """The checkpoint's ``unipts`` metadata completed from its run directory (:func:`find_origin`),
    or None where neither records the run."""
    origin = find_origin(path, meta)
    return origin.as_metadata() if origin is not None else None


def adopt_checkpoint_run(cfg: DictConfig, key: str = "checkpoint") -> DictConfig:
    """:func:`adopt_run` for the checkpoint that ``cfg.<key>`` names. A missing or unreadable file
    is left to the checks that read it for its weights (they say what is wrong in one line)."""
    import torch

    value = OmegaConf.select(cfg, key, throw_on_missing=False, default=None)
    if value is None:
        return cfg
    path = Path(str(value)).expanduser()
    if not path.is_file():
        return cfg
    obj = None
    for mmap in (True, False):  # mapped, not read, where the file's format allows: only the metadata is looked at
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:  # noqa: BLE001 - reading it for its weights reports why
            continue
    if obj is None:
        return cfg
    return adopt_run(cfg, path, read_metadata(obj, path))


def command_line_choices() -> tuple[set[str], list[str]]:
    """Which of ``model``/``data`` the command line chose (``model=``, ``data=``, ``experiment=``),
    and its overrides of keys under them (``data.root=...``), as Hydra received them. Outside a
    Hydra command nothing is known, and both count as chosen (the config was composed on purpose)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set(GROUPS), []
    chosen, keys = set(), []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        key = key.split("@", 1)[0]
        if key in GROUPS:
            chosen.add(key)
        elif key == "experiment":
            chosen.update(GROUPS)
        elif key.split(".", 1)[0] in GROUPS:
            keys.append(override)
    return chosen, keys


def _as_chosen(model: dict) -> str:
    """A model config as the command line chooses it: ``resnet18``, ``timm model.name=resnet18``."""
    name = model.get("_target_") or model.get("name")
    return f"{model['library']} model.name={name}" if model.get("library") and not model.get("_target_") else str(name)


def check_choice(group: str, given: dict, origin: Origin, path: Path) -> None:
    """A ``model=``/``data=`` of the command line against the run's: a different architecture or
    class count cannot be the network in the file; another data set with the same classes may be
    (a moved or re-exported copy), and is only logged."""
    recorded = origin.group(group)
    if group == "model":
        if recorded is None:
            return
        from ..models import architecture

        if architecture(given) != architecture(recorded):
            mine, theirs = _as_chosen(given), _as_chosen(recorded)
            raise UniptsError(f"model: {mine} given, but {path} was written by a run of model {theirs} ({origin.source}); "
                              f"valid: model={theirs}, or leave model= out to use the run's")
        return
    theirs = recorded.get("name") if recorded else origin.data_name
    if recorded is not None:
        a, b = given.get("num_classes"), recorded.get("num_classes")
        if a is not None and b is not None and a != b:
            raise UniptsError(f"data.num_classes: {a} given (data={given.get('name')}), but {path} was written by a "
                              f"run with {b} classes (data={theirs}, {origin.source}); valid: {b}, or leave data= out "
                              "to use the run's")
    if theirs is not None and given.get("name") != theirs:
        log.warning("data: scoring on data=%s as the command line says; %s was written by a run on data=%s",
                    given.get("name"), path, theirs)


def adopt_run(cfg: DictConfig, path: Path, meta: dict | None, *, chosen: set[str] | None = None,
              key_overrides: list[str] | None = None) -> DictConfig:
    """``cfg`` with the model and data settings of the run that wrote the checkpoint at ``path``
    (``meta``: its ``unipts`` metadata), where the command line did not choose them; the command
    line's own ``model.*``/``data.*`` keys are applied on top. ``chosen``/``key_overrides``
    default to what Hydra received (:func:`command_line_choices`)."""
    if chosen is None:
        chosen, key_overrides = command_line_choices()
    origin = find_origin(path, meta)
    if origin is None:
        missing = [g for g in GROUPS if g not in chosen]
        if missing:
            raise UniptsError(f"checkpoint: {path} records no run (a bare state_dict, no unipts metadata and no run "
                              f"directory around it); give {' and '.join(f'{g}=<name>' for g in missing)} "
                              "(e.g. model=resnet20 data=cifar10)")
        return cfg
    adopted = []
    for group in GROUPS:
        if group in chosen:
            check_choice(group, OmegaConf.to_container(cfg[group], resolve=True), origin, path)
            continue
        recorded = origin.group(group)
        if recorded is None:
            raise UniptsError(f"data: {path} names data={origin.data_name} but not its settings, and no run directory "
                              f"is beside it to read them from; give data={origin.data_name or '<name>'} "
                              "(and data.root=... where it needs one)")
        with open_dict(cfg):
            cfg[group] = OmegaConf.create(recorded)
        adopted.append(group)
    if adopted:
        _reapply(cfg, [o for o in key_overrides or [] if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] in adopted])
        log.info("checkpoint: %s from the run that wrote it (%s)",
                 ", ".join(f"{g} {cfg[g].get('name')}" for g in adopted), origin.source)
    return cfg


def _reapply(cfg: DictConfig, overrides: list[str]) -> None:
    """The command line's ``data.root=...`` and the like, on the settings taken from the run."""
    if not overrides:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        with open_dict(cfg):
            if override.is_delete():
                parent, _, leaf = override.key_or_group.rpartition(".")
                node = OmegaConf.select(cfg, parent)
                if node is not None and leaf in node:
                    del node[leaf]
            else:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False, force_add=True)
