"""A test-only callback: every rank hashes its masks (and per-layer sparsities, calibration
indices), the hashes are all-gathered, and rank 0 writes them to a JSON file.

Used through ``+extra_callbacks.probe._target_=tests.helpers.mask_probe.MaskHashes``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl
import torch


def _digest(pl_module: pl.LightningModule, trainer: pl.Trainer) -> bytes:
    h = hashlib.sha256()
    for name, buf in sorted(pl_module.network().named_buffers()):
        if name.endswith((".mask", ".target_sparsity")):
            h.update(name.encode())
            h.update(buf.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(trainer.datamodule.calib_indices).encode())
    return h.digest()


class MaskHashes(pl.Callback):
    def __init__(self, path: str, every: int = 2) -> None:
        self.path = Path(path)
        self.every = every
        self.records: list[dict] = []

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> None:
        mine = torch.tensor(list(_digest(pl_module, trainer)), dtype=torch.int64, device=pl_module.device)
        every_rank = trainer.strategy.all_gather(mine).reshape(trainer.world_size, -1)
        if trainer.is_global_zero:
            hashes = [bytes(row.tolist()).hex() for row in every_rank.cpu()]
            self.records.append({"tag": tag, "step": trainer.global_step, "world_size": trainer.world_size,
                                 "hashes": hashes})
            self.path.write_text(json.dumps(self.records, indent=1))

    def on_fit_start(self, trainer, pl_module) -> None:  # after SparsitySearch's on_fit_start
        self._record(trainer, pl_module, "after_search")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # after DynamicSparsity's
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module, f"step {trainer.global_step}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(trainer, pl_module, "end")
