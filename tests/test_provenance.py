"""Eval and export read the run a checkpoint came from: its model, data and class settings, from
the checkpoint's metadata or its run directory; model=/data= on the command line still win and are
checked against them; a bare state_dict needs them, and says so in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from unipts import UniptsError
from unipts.spec.provenance import adopt_run, checkpoint_metadata, find_origin

from .conftest import read_summary, run_cli
from .test_config import _compose
from .test_imagefolder import _jpeg_tree

RESNET18 = {"name": "resnet18", "exclude": []}


def _folder_data(root: str, **extra) -> dict:
    return {"name": "imagefolder", "num_classes": None, "class_index": None, "root": root, "train_dir": "train",
            "eval_dir": "val", "image_size": 32, "resize": 36, "augment": True, "skip_bad_images": False,
            "batch_size": 4, "eval_batch_size": 12, "num_workers": 0, **extra}


def _run_dir(tmp_path: Path, meta: dict | None, config: dict | None = None, name: str = "final.ckpt") -> Path:
    """A run directory as unipts-prune leaves it: checkpoints/<name> (with ``meta`` as its unipts
    entry, if any) and .unipts/config.json (``config``, if any)."""
    ckpt = tmp_path / "run" / "checkpoints" / name
    ckpt.parent.mkdir(parents=True)
    obj = {"state_dict": {"student.fc.weight": torch.zeros(3, 4)}}
    if meta is not None:
        obj["unipts"] = json.dumps(meta)
    torch.save(obj, ckpt)
    if config is not None:
        (tmp_path / "run" / ".unipts").mkdir()
        (tmp_path / "run" / ".unipts" / "config.json").write_text(json.dumps(config))
    return ckpt


def _eval_cfg(ckpt: Path, *overrides: str):
    return _compose([f"checkpoint={ckpt}", *overrides], "eval")


def test_eval_takes_model_data_and_classes_from_the_run_directory(tmp_path):
    """An older final.ckpt names its model and data set only: the rest is the run's recorded
    configuration; a relative data.root was the run's working directory's; data.* keys of the
    command line apply on top."""
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    config = {"model": RESNET18, "data": _folder_data("images", num_classes=5, class_index="classes.txt"),
              "paths": {"root": str(tmp_path)}}
    ckpt = _run_dir(tmp_path, {"model": RESNET18, "data": "imagefolder"}, config)
    cfg = adopt_run(_eval_cfg(ckpt, "data.eval_batch_size=7"), ckpt, json.loads(torch.load(ckpt)["unipts"]))
    assert cfg.model.name == "resnet18" and cfg.data.name == "imagefolder"
    assert cfg.data.root == str(tmp_path / "images") and cfg.data.class_index == str(tmp_path / "classes.txt")
    assert cfg.data.num_classes == 5 and cfg.data.image_size == 32
    assert cfg.data.eval_batch_size == 7  # the command line's, over the run's 12
    assert cfg.checkpoint == str(ckpt)


def test_the_checkpoints_own_settings_win_and_travel_with_it(tmp_path):
    """A final.ckpt that records its data settings needs no run directory (a copied file)."""
    meta = {"model": RESNET18, "data": "imagefolder", "data_config": _folder_data("/data/folder")}
    moved = tmp_path / "copy.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 4)}, "unipts": json.dumps(meta)}, moved)
    cfg = adopt_run(_eval_cfg(moved), moved, meta)
    assert (cfg.model.name, cfg.data.name, cfg.data.root, cfg.data.resize) == ("resnet18", "imagefolder",
                                                                               "/data/folder", 36)
    # in its run directory too, the checkpoint's own record is the one read
    config = {"model": {"name": "resnet50", "exclude": []}, "data": _folder_data("/elsewhere")}
    ckpt = _run_dir(tmp_path, meta, config)
    assert find_origin(ckpt, meta).data["root"] == "/data/folder"


def test_a_lightning_checkpoint_is_read_through_its_run_directory(tmp_path):
    config = {"model": RESNET18, "data": _folder_data("/data/folder"), "paths": {"root": "/somewhere"}}
    ckpt = _run_dir(tmp_path, None, config, name="last.ckpt")
    cfg = adopt_run(_eval_cfg(ckpt), ckpt, None)
    assert (cfg.model.name, cfg.data.name, cfg.data.root) == ("resnet18", "imagefolder", "/data/folder")
    # without .unipts/, the summary's config
    (tmp_path / "run" / ".unipts" / "config.json").unlink()
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"task": "prune", "config": config}))
    assert adopt_run(_eval_cfg(ckpt), ckpt, None).model.name == "resnet18"


def test_model_and_data_on_the_command_line_win_and_are_checked(tmp_path):
    meta = {"model": RESNET18, "data": "imagefolder", "data_config": _folder_data("/data/folder", num_classes=3)}
    ckpt = _run_dir(tmp_path, meta)
    with pytest.raises(UniptsError, match=r"^model: resnet20 given, but .*final\.ckpt was written by a run of model "
                                          r"resnet18 .*valid: model=resnet18"):
        adopt_run(_eval_cfg(ckpt, "model=resnet20"), ckpt, meta)
    with pytest.raises(UniptsError, match=r"^data\.num_classes: 10 given \(data=cifar10\), but .* 3 classes"):
        adopt_run(_eval_cfg(ckpt, "model=resnet18", "data=cifar10"), ckpt, meta)
    kept = adopt_run(_eval_cfg(ckpt, "model=resnet18", "data=imagefolder", "data.root=/mine"), ckpt, meta)
    assert (kept.model.name, kept.data.root, kept.data.image_size) == ("resnet18", "/mine", 224)  # the group's own
    # an experiment chooses both
    chosen = adopt_run(_eval_cfg(ckpt, "experiment=imagenet_resnet50"), ckpt,
                       {**meta, "model": {"name": "resnet50", "exclude": []}, "data_config": _folder_data("/x")})
    assert (chosen.model.name, chosen.data.name) == ("resnet50", "imagenet")


def test_a_bare_state_dict_needs_model_and_data_and_says_so(tmp_path):
    bare = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(3, 4)}, bare)
    with pytest.raises(UniptsError, match=r"^checkpoint: .*weights\.pt records no run .*give model=<name> and "
                                          r"data=<name>"):
        adopt_run(_eval_cfg(bare), bare, None)
    with pytest.raises(UniptsError, match=r"give data=<name> \("):
        adopt_run(_eval_cfg(bare, "model=resnet20"), bare, None)
    cfg = adopt_run(_eval_cfg(bare, "model=resnet20", "data=cifar10"), bare, None)
    assert (cfg.model.name, cfg.data.name) == ("resnet20", "cifar10")
    # an older final.ckpt moved out of its run: its model, but not its data settings
    moved = tmp_path / "old.ckpt"
    with pytest.raises(UniptsError, match=r"^data: .*old\.ckpt names data=imagefolder but not its settings"):
        adopt_run(_eval_cfg(moved), moved, {"model": RESNET18, "data": "imagefolder"})


def test_checkpoint_metadata_records_absolute_data_paths(tmp_path):
    from unipts.spec import resolved

    cfg = _compose(["data=imagefolder", "data.root=images", "model=resnet18"])
    meta = checkpoint_metadata(resolved(cfg))
    assert meta["model"] == RESNET18 and meta["data"] == "imagefolder"
    assert meta["data_config"]["root"] == str(Path.cwd() / "images") and meta["data_config"]["image_size"] == 224


# -- the commands, as a user runs them -------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_run(tmp_path_factory, cli_env):
    """An ImageFolder ResNet-18 run (32 px images, 3 classes) with its final.ckpt."""
    import torchvision

    tmp = tmp_path_factory.mktemp("provenance")
    root = _jpeg_tree(tmp / "images", ["a", "b", "c"], size=32)
    dense = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), dense)
    run_dir = tmp / "run"
    run_cli("prune", run_dir, "model=resnet18", "data=imagefolder", f"data.root={root}", "data.image_size=32",
            "data.resize=32", "data.num_workers=0", "data.batch_size=8", f"dense_ckpt={dense}", "method=magnitude",
            "allocation=global", "calib.size=8", "sparsity.target=0.8", "trainer.enable_progress_bar=false",
            env=cli_env)
    return run_dir, read_summary(run_dir)


def test_eval_of_an_imagefolder_resnet18_run_needs_no_model_or_data(resnet18_run, cli_env):
    run_dir, pruned = resnet18_run
    eval_dir = run_dir.parent / "eval"
    proc = run_cli("eval", eval_dir, f"checkpoint={run_dir / 'checkpoints' / 'final.ckpt'}",
                   "trainer.enable_progress_bar=false", env=cli_env)
    evaluated = read_summary(eval_dir)
    assert re.search(rf"^  top-1 +{evaluated['top1']:.4f} ", proc.stdout + proc.stderr, re.M)
    assert (evaluated["model"], evaluated["data"]) == ("resnet18", "imagefolder")
    assert evaluated["config"]["data"]["image_size"] == 32 and evaluated["config"]["data"]["num_classes"] is None
    assert evaluated["top1"] == pytest.approx(pruned["top1"])
    assert evaluated["achieved_sparsity"] == pytest.approx(pruned["achieved_sparsity"])
    # a model= that is not the run's is refused in one line, before any work
    wrong = run_cli("eval", run_dir.parent / "wrong", f"checkpoint={run_dir / 'checkpoints' / 'final.ckpt'}",
                    "model=resnet20", env=cli_env, check=False)
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert wrong.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: model: resnet20 given, but ")


@pytest.mark.slow
def test_export_of_an_imagefolder_resnet18_run_uses_its_image_size(resnet18_run, cli_env):
    run_dir, _ = resnet18_run
    out = run_dir.parent / "export"
    run_cli("export", out, f"checkpoint={run_dir / 'checkpoints' / 'final.ckpt'}", "onnx.enabled=false", env=cli_env)
    report = json.loads((out / "export.json").read_text())
    assert (report["model"], report["data"], report["input_shape"]) == ("resnet18", "imagefolder", [3, 32, 32])


def test_eval_of_a_bare_state_dict_asks_for_model_and_data_in_one_line(tmp_path, cli_env):
    from unipts.models import DigitsNet

    bare = tmp_path / "weights.pt"
    torch.save(DigitsNet().state_dict(), bare)
    proc = run_cli("eval", tmp_path / "run", f"checkpoint={bare}", env=cli_env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == [
        f"error: checkpoint: {bare} records no run (a bare state_dict, no unipts metadata and no run directory "
        "around it); give model=<name> and data=<name> (e.g. model=resnet20 data=cifar10)"]
    assert "Traceback" not in proc.stderr
