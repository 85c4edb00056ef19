"""Issue 27: the run's identity travels inside every checkpoint and is checked on resume, whether or
not the run directory is intact."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unipts import UniptsError
from unipts.lightning.callbacks import RunIdentity
from unipts.runs.identity import (
    IDENTITY_KEY, check_identity, checkpoint_identity, fingerprint, identity_record, with_identity,
)

CONFIG = {"task": "prune", "seed": 0, "sparsity": {"target": 0.9, "pattern": "unstructured"},
          "paths": {"output_dir": "/runs/a"}, "trainer": {"enable_progress_bar": True, "max_epochs": 2}}
RECORD = identity_record(CONFIG, "sha256:" + "0" * 64)


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)


def _fit(run_dir, record, epochs=1, ckpt_path=None):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[RunIdentity(record), ModelCheckpoint(
                             run_dir / "checkpoints", save_last=True)])
    trainer.fit(Tiny(), ckpt_path=ckpt_path)
    return run_dir / "checkpoints" / "last.ckpt"


def test_every_checkpoint_carries_the_identity_read_as_data(tmp_path):
    last = _fit(tmp_path, RECORD)
    assert checkpoint_identity(last) == RECORD  # torch.load(weights_only=True) inside
    assert RECORD["config"]["sparsity.target"] == 0.9 and "paths.output_dir" not in RECORD["config"]
    epoch_files = [p for p in (tmp_path / "checkpoints").iterdir() if p.name != "last.ckpt"]
    assert epoch_files and all(checkpoint_identity(p) == RECORD for p in epoch_files)


def test_a_checkpoint_without_one_reads_as_none(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    assert checkpoint_identity(plain) is None
    assert check_identity(None, CONFIG, "plain.ckpt") is False  # nothing to check: the caller decides


def test_with_identity_for_the_final_checkpoint(tmp_path):
    path = tmp_path / "final.ckpt"
    obj = {"state_dict": {"student.w": torch.ones(3)}, "unipts": "{}"}
    torch.save(with_identity(obj, RECORD), path)
    assert checkpoint_identity(path) == RECORD
    assert IDENTITY_KEY not in obj  # the caller's dict is left alone


def test_a_copied_checkpoint_resumed_with_another_target_is_refused(tmp_path):
    last = _fit(tmp_path / "run", RECORD)
    copied = tmp_path / "elsewhere.ckpt"  # out of its run directory: no .unipts/ beside it
    copied.write_bytes(last.read_bytes())
    changed = identity_record({**CONFIG, "sparsity": {"target": 0.5, "pattern": "unstructured"}}, RECORD["fingerprint"])
    with pytest.raises(UniptsError) as err:
        _fit(tmp_path / "resumed", changed, epochs=2, ckpt_path=copied)
    line = str(err.value)
    assert line.startswith("sparsity.target: differ from the run being resumed (the checkpoint ")
    assert "sparsity.target: 0.9 in the run, 0.5 now" in line and "\n" not in line
    assert not (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()  # stopped before any step

    # free keys may change: the same run, written elsewhere and shown differently
    same = identity_record({**CONFIG, "paths": {"output_dir": "/b"}, "trainer": {"enable_progress_bar": False,
                                                                                 "max_epochs": 2}}, RECORD["fingerprint"])
    assert checkpoint_identity(_fit(tmp_path / "resumed", same, epochs=2, ckpt_path=copied)) == same


def test_another_dense_model_or_calibration_subset_is_refused(tmp_path):
    last = _fit(tmp_path, RECORD)
    other = identity_record(CONFIG, "sha256:" + "1" * 64)
    with pytest.raises(UniptsError, match=r"^dense_ckpt, calib: the dense model or the calibration subset differ"):
        _fit(tmp_path / "resumed", other, epochs=2, ckpt_path=last)
    check_identity(checkpoint_identity(last), CONFIG, "x", fingerprint=None)  # fingerprint not known yet: not checked


def test_the_fingerprint_covers_weights_and_calibration_indices_not_memory_layout():
    conv = nn.Conv2d(3, 8, 3)
    state = conv.state_dict()
    base = fingerprint(state, [3, 1, 2])
    assert base.startswith("sha256:") and base == fingerprint(dict(reversed(list(state.items()))), [3, 1, 2])
    assert fingerprint(conv.to(memory_format=torch.channels_last).state_dict(), [3, 1, 2]) == base
    assert fingerprint(state, [3, 1, 4]) != base and fingerprint(state, [1, 2, 3]) != base
    nudged = {k: v.clone() for k, v in state.items()}
    nudged["bias"][0] += 1e-6
    assert fingerprint(nudged, [3, 1, 2]) != base
    assert fingerprint({"w": torch.zeros(2, 3)}, []) != fingerprint({"w": torch.zeros(3, 2)}, [])  # shapes count
    assert fingerprint({"w": torch.zeros(2, dtype=torch.bfloat16)}, []).startswith("sha256:")
