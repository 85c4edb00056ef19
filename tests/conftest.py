from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
CIFAR10_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def ctrl_c():
    """Ctrl-C (SIGINT) as a terminal delivers it, for tests that send it: a suite started in the
    background (``nohup ... &``) inherits SIGINT ignored, and unipts rightly keeps it so. Yields
    what a child command's ``preexec_fn`` calls to get it back."""
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGINT, earlier)


def tiny_net(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    from unipts.models import DigitsNet

    return DigitsNet(num_classes=num_classes, in_channels=in_channels, width=8)


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict:
    """Environment for CLI subprocesses: a shared dense-model cache, offline W&B, quiet output."""
    env = dict(os.environ)
    env["UNIPTS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    env["WANDB_MODE"] = "offline"
    env["PYTHONWARNINGS"] = "ignore"
    return env


FAST = ["data.pretrain.epochs=2", "finetune.epochs=2", "calib.size=64", "trainer.enable_progress_bar=false",
        "trainer.check_val_every_n_epoch=1"]


def run_cli(command: str, run_dir: Path, *overrides: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m unipts.cli.<command>`` with its Hydra run directory at ``run_dir``."""
    args = [sys.executable, "-m", f"unipts.cli.{command}", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(args, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def prune_refusal(run_dir: Path, *overrides: str, cache_dir: str) -> str:
    """The one line ``unipts-prune`` refuses ``overrides`` with, found in-process: the configuration
    composed, the spec built and the pipeline started as the command does, without a subprocess's
    seconds of imports (a refusal comes before any work). Fails if the run goes through. How the
    command prints a refusal (one ``error:`` line, status 2) is tested once, in test_faults."""
    from contextlib import ExitStack

    from hydra import compose, initialize_config_dir

    from unipts import CONFIG_DIR, UniptsError
    from unipts.pipeline.prune import run, start
    from unipts.spec import build_prune_spec

    paths = [f"paths.root={run_dir.parent}", f"paths.output_dir={run_dir}", f"paths.cache_dir={cache_dir}",
             f"paths.data_dir={run_dir.parent / 'data'}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("prune", overrides=[*overrides, *paths])
    with pytest.raises(UniptsError) as refused, ExitStack() as held:
        spec = build_prune_spec(cfg)
        run(spec, start(spec, held))
    message = str(refused.value)
    assert "\n" not in message, message
    assert not (run_dir / "summary.json").exists()
    return message
