"""Surviving pre-emption and bad input: exact resume after SIGKILL, NaN losses, unreadable images,
config values checked at start. Real subprocesses, tiny settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import REPO, read_summary, run_cli

# 8 steps per epoch, so a kill lands mid-run; a 2-generation search keeps it short; every epoch's
# checkpoint is kept (not the default), so the test can wait for epoch001.ckpt.
RESUME = ["data.pretrain.epochs=2", "finetune.epochs=4", "calib.size=128", "data.batch_size=16",
          "trainer.enable_progress_bar=false", "allocation.generations=2",
          "allocation.population=6", "allocation.parents=3", "checkpoint.save_top_k=-1"]


def _final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_killed_run_resumes_to_the_same_masks_and_accuracy(tmp_path, cli_env):
    full = tmp_path / "full"
    run_cli("prune", full, *RESUME, env=cli_env)

    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "unipts.cli.prune", f"hydra.run.dir={killed}", *RESUME]
    proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "epoch001.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "summary.json").exists(), "the run finished before the kill: make it longer"
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 0 <= last["epoch"] < 3  # the kill may land between epoch001.ckpt and its last.ckpt
    fit_before_kill = last["callbacks"]["FitClock"]["fit_s"]

    resumed = run_cli("prune", killed, *RESUME, "ckpt_path=last", env=cli_env)
    log = resumed.stdout + resumed.stderr
    assert "not searching again" in log and "reusing the calibration subset" in log
    a, b = read_summary(full), read_summary(killed)
    assert b["resumed_from"].endswith("last.ckpt")
    assert b["top1"] == a["top1"] and b["top5"] == a["top5"]
    assert b["searched_table"] == a["searched_table"]
    # the summary counts the interrupted session's fit too, up to the checkpoint it resumed from
    assert "earlier_sessions" not in a["wall_s"]
    assert fit_before_kill > 0 and b["wall_s"]["earlier_sessions"] == pytest.approx(fit_before_kill)
    sa, sb = _final_state(full), _final_state(killed)
    assert sa.keys() == sb.keys()
    for key in sa:  # masks, per-layer sparsities and weights: bit for bit
        assert torch.equal(sa[key], sb[key]), key
    assert (killed / "csv" / "metrics.0.csv").is_file()  # the interrupted run's metrics are kept
    kept = sorted(p.name for p in (killed / "checkpoints").iterdir())
    # a rewritten epoch's file replaces the old one: no epochNNN-v1.ckpt beside it
    assert kept == sorted(p.name for p in (full / "checkpoints").iterdir())


def test_resume_with_another_calibration_subset_is_refused(tmp_path, cli_env):
    from unipts.runs.identity import identity_record

    from .test_faults import _resolved

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    overrides = ["data.pretrain.epochs=2", "calib.size=64"]
    # only its shape and identity are checked: the subsets are compared before the fine-tune reads it
    torch.save({"state_dict": {}, "optimizer_states": [], "loops": {}, "epoch": 0,
                "unipts_identity": identity_record(_resolved(overrides))}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "calib_indices.json").write_text(json.dumps(list(range(64))))
    proc = run_cli("prune", run_dir, *overrides, "ckpt_path=last", env=cli_env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "calib.seed" in errors[0], proc.stderr[-2000:]
    assert "calib_indices.json" in errors[0]


def test_a_resumed_pretraining_keeps_the_earlier_metrics(tmp_path, cli_env):
    """A dense training continued over several sessions keeps every session's metrics: Lightning's
    CSV logger starts ``metrics.csv`` afresh, so the earlier file is kept beside it first."""
    run_dir = tmp_path / "run"
    base = ["data.pretrain.epochs=1", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    run_cli("pretrain", run_dir, *base, env=cli_env)
    first = (run_dir / "csv" / "metrics.csv").read_text()
    assert len(first.splitlines()) > 2  # a header and some training steps
    first_fit = read_summary(run_dir)["wall_s"]["finetune"]
    # as a run stopped after its last checkpoint, before its results were written
    (run_dir / "summary.json").unlink()
    (run_dir / "checkpoints" / "dense.pt").unlink()
    run_cli("pretrain", run_dir, *base, "ckpt_path=last", env=cli_env)
    assert (run_dir / "csv" / "metrics.0.csv").read_text() == first
    # the first session's training time is counted, up to its last checkpoint
    assert 0 < read_summary(run_dir)["wall_s"]["earlier_sessions"] <= first_fit


def test_resume_without_a_checkpoint_names_ckpt_path(tmp_path, cli_env):
    proc = run_cli("prune", tmp_path / "fresh", "ckpt_path=last", env=cli_env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "ckpt_path" in errors[0] and "last.ckpt" in errors[0]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cli_env):
    run_dir = tmp_path / "nan"
    # the tests package first, then any source tree the suite itself runs on (a worktree's src)
    python_path = os.pathsep.join(filter(None, [str(REPO), cli_env.get("PYTHONPATH")]))
    env = {**cli_env, "UNIPTS_TEST_NAN_EPOCH": "2", "PYTHONPATH": python_path}
    args = [sys.executable, "-m", "tests.helpers.nan_prune", f"hydra.run.dir={run_dir}", "data.pretrain.epochs=2",
            "finetune.epochs=5", "calib.size=64", "trainer.enable_progress_bar=false", "allocation.generations=1",
            "allocation.population=4", "allocation.parents=2"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "non-finite loss" in errors[0] and "epoch 2" in errors[0] and "step 2" in errors[0]
    assert "Traceback" not in proc.stderr
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["last.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "summary.json").exists()


def test_a_nan_loss_before_the_first_checkpoint_points_to_none(tmp_path, cli_env):
    """Issue 27: in epoch 0 the message pointed to checkpoints/last.ckpt, which did not exist."""
    run_dir = tmp_path / "nan"
    python_path = os.pathsep.join(filter(None, [str(REPO), cli_env.get("PYTHONPATH")]))
    env = {**cli_env, "UNIPTS_TEST_NAN_EPOCH": "0", "PYTHONPATH": python_path}
    args = [sys.executable, "-m", "tests.helpers.nan_prune", f"hydra.run.dir={run_dir}", "data.pretrain.epochs=2",
            "finetune.epochs=2", "calib.size=64", "trainer.enable_progress_bar=false", "allocation=uniform"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "at epoch 0, step 0" in errors[0] and "last.ckpt" not in errors[0]
    assert "before the first checkpoint, so nothing can be resumed: start a new run with other settings" in errors[0]
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def _image_tree(root: Path, broken: bool) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) // (2 if label == "a" else 1)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    if broken:
        (root / "train" / "a" / "broken.png").write_bytes(b"not an image at all")
    return root


IMAGEFOLDER = ["data=imagefolder", "data.image_size=8", "data.resize=8", "data.num_workers=0", "model=digits_net",
               "data.pretrain_on_the_fly=true", "data.pretrain.epochs=1", "method=magnitude", "calib.size=8",
               "sparsity.target=0.5", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_unreadable_image_is_named_or_skipped_and_counted(tmp_path, cli_env):
    root = _image_tree(tmp_path / "images", broken=True)
    env = {**cli_env, "UNIPTS_CACHE_DIR": str(tmp_path / "cache")}
    proc = run_cli("prune", tmp_path / "strict", *IMAGEFOLDER, f"data.root={root}", env=env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert str(root / "train" / "a" / "broken.png") in errors[0] and "data.skip_bad_images" in errors[0]

    run_dir = tmp_path / "lenient"
    proc = run_cli("prune", run_dir, *IMAGEFOLDER, f"data.root={root}", "data.skip_bad_images=true", env=env)
    summary = read_summary(run_dir)
    assert summary["skipped_images"] == 1 and summary["calib_size"] == 8
    assert f"skipped 1 unreadable image(s) (data.skip_bad_images=true), e.g. {root / 'train' / 'a' / 'broken.png'}" in (
        proc.stdout + proc.stderr)
    # the 8 calibration images are drawn from the 12 readable training images, the broken one left out
    indices = json.loads((run_dir / "calib_indices.json").read_text())
    assert len(set(indices)) == 8 and max(indices) < 12


def test_final_outputs_are_never_half_written(tmp_path):
    """A crash while writing leaves the earlier complete file and no stray temporary."""
    from unipts.atomic import save_torch_atomic as save_state_dict_atomic, write_json_atomic

    target = tmp_path / "summary.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object.__new__(type("X", (), {"__str__": None}))})
    assert json.loads(target.read_text()) == {"ok": 1}
    ckpt = tmp_path / "final.ckpt"
    save_state_dict_atomic({"w": torch.ones(2)}, ckpt)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_state_dict_atomic({"w": Unpicklable()}, ckpt)
    assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.ckpt", "summary.json"]


def test_lightning_checkpoints_are_written_atomically(tmp_path):
    from unipts.pipeline.builders import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    io.save_checkpoint({"a": torch.ones(1)}, tmp_path / "last.ckpt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"a": Unpicklable()}, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


TYPE_AND_RANGE = [
    (["sparsity.target=abc"], "sparsity.target", "not a number"),
    (["sparsity.target=1.0"], "sparsity.target", "outside"),
    (["calib.size=1.5"], "calib.size", "not an integer"),
    (["calib.size=-3"], "calib.size", "below the minimum"),
    (["dense_ckpt=/"], "dense_ckpt", "is a folder"),
    (["dense_ckpt=/nonexistent/dense.pt"], "dense_ckpt", "no such file"),
    (["model.name=resnet1000"], "model.name", "unknown model"),
    (["data=cifar10", "model=resnet20", "data.root=/nonexistent"], "data.root", "no such file"),
    (["data=imagefolder", "data.root=/", "data.skip_bad_images=maybe"], "data.skip_bad_images", "not a boolean"),
    (["finetune.momentum=1.5"], "finetune.momentum", "outside"),
    # issue 27: seeds past what Lightning (numpy) or torch's generator take were tracebacks mid-run
    (["seed=99999999999999999999"], "seed", "outside [0, 4294967295]"),
    (["calib.seed=18446744073709551616"], "calib.seed", "outside [0, 4294967295]"),
    (["allocation=search", "allocation.seed=4294967296"], "allocation.seed", "outside [0, 4294967295]"),
    (["eval_split=val", "validation.seed=-1"], "validation.seed", "outside [0, 4294967295]"),
    (["runtime.threads=999"], "runtime.threads", "999 is more than the"),  # threads only contend past the CPUs
    (["runtime.channels_last=1"], "runtime.channels_last", "not a boolean"),  # was taken as true
    (["runtime.verbose=yes please"], "runtime.verbose", "not a boolean"),
    # options that do nothing without their partner (the features were silently not distilled)
    (["objective.feature_weight=1.0"], "objective.features, objective.feature_weight", "only with both"),
    (["objective.features=[fc]"], "objective.features, objective.feature_weight", "only with both"),
    (["checkpoint.monitor=val/nothing"], "checkpoint.monitor", "valid: val/top1, val/top5"),  # a traceback after epoch 0
]


@pytest.mark.parametrize("overrides,key,what", TYPE_AND_RANGE, ids=[" ".join(o) for o, _, _ in TYPE_AND_RANGE])
def test_config_values_are_checked_at_start(overrides, key, what):
    from unipts import UniptsError
    from unipts.spec import build_prune_spec

    from .test_config import _compose

    with pytest.raises(UniptsError) as err:
        build_prune_spec(_compose(overrides))
    assert str(err.value).startswith(f"{key}:") and what in str(err.value)


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5"])
def test_an_omp_num_threads_torch_cannot_take_is_refused(monkeypatch, value):
    """runtime.threads=auto defers to OMP_NUM_THREADS: a value torch would ignore is said, not taken."""
    from unipts import UniptsError
    from unipts.spec import build_prune_spec

    from .test_config import _compose

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(UniptsError, match=rf"^OMP_NUM_THREADS: '{value}' in the environment is not a number of "
                                          r"threads >= 1; unset it, or set runtime.threads \(auto or 1\.\."):
        build_prune_spec(_compose([]))
    build_prune_spec(_compose(["runtime.threads=1"]))  # an explicit count does not read it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    build_prune_spec(_compose([]))


def test_label_training_stops_on_a_non_finite_loss(tmp_path):
    """Pre-training and gmp_full train with labels (Classifier): a NaN loss stops them too."""
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from unipts.lightning import Classifier
    from unipts.lightning.module import NonFiniteError

    class Poisoned(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) * float("nan")

    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,))), batch_size=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    model = Poisoned()
    before = model.fc.weight.detach().clone()
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        trainer.fit(Classifier(model, 3), data)
    assert torch.equal(model.fc.weight, before)  # stopped before any update
