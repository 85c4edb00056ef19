"""The LightningDataModule: a calibration subset of the training split, and the evaluation split."""

from __future__ import annotations

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import Splits


class CalibrationDataModule(pl.LightningDataModule):
    """Trains on ``calib_indices`` of the training split (all of it when ``None``); validates and
    tests on the evaluation split. In-memory data sets are augmented per batch after transfer."""

    def __init__(self, splits: Splits, calib_indices: list[int] | None, batch_size: int = 64,
                 eval_batch_size: int = 256, num_workers: int = 0) -> None:
        super().__init__()
        self.splits = splits
        self.calib_indices = calib_indices
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers

    def _loader(self, data: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def calibration_set(self, plain: bool = False) -> Dataset:
        data = self.splits.train_plain if plain else self.splits.train
        return data if self.calib_indices is None else Subset(data, self.calib_indices)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.calibration_set(), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.eval, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.splits.batch_augment is not None and self.trainer is not None and self.trainer.training:
            x, y = batch
            batch = self.splits.batch_augment(x), y
        return batch
