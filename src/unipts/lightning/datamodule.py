"""The LightningDataModule: a calibration subset of the training split, and the evaluation split."""

from __future__ import annotations

from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..data import Splits
from ..data.augment import DistillAugment
from ..data.workers import loader_workers


def trainer_workers(setting: int | str, trainer: pl.Trainer | None) -> int:
    """The loader processes ``data.num_workers`` (an integer or ``"auto"``) gives one process of
    ``trainer`` (None: a process on its own): under DDP every process on the node starts its own
    workers, so ``auto`` shares the CPUs among them."""
    return loader_workers(setting, trainer.num_devices if trainer is not None else 1)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A seed for one epoch (and one rank) of a run seeded with ``seed``."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2**63 - 1)


class EpochShuffle(Sampler[int]):
    """A random order of ``n`` items that depends only on ``seed`` and the epoch.

    Lightning calls :meth:`set_epoch` before each training epoch (also after a resume), so a run
    resumed from a checkpoint sees the same order in every later epoch as an uninterrupted run,
    whatever else consumed the global random generator before the fit.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(self.n, generator=gen).tolist()


class CalibrationDataModule(pl.LightningDataModule):
    """Trains on ``calib_indices`` of the training split (all of it when ``None``); validates and
    tests on the evaluation split. In-memory data sets are augmented per batch after transfer;
    ``distill_augment`` (distillation only: labels are left as they are) then crops and mixes the
    training batch.
    The last ``holdout`` calibration images are left out of training (they score the student,
    see :class:`KeepBestStudent`); the search and BN passes still see every calibration image.

    ``num_workers`` is ``data.num_workers``: an integer, or ``"auto"``, resolved when a loader is
    made, from the CPUs this process may use shared among the trainer's processes on the node.
    Loaders feeding a GPU pin their batches so that the copy to the device does not block.

    Shuffling and batch augmentation draw from generators seeded by ``seed``, the epoch and the
    rank, so training is a function of the seed and a resumed fit repeats an uninterrupted one.
    The calibration indices are part of the checkpoint (the datamodule's state): resuming with a
    different subset is an error.
    """

    def __init__(self, splits: Splits, calib_indices: list[int] | None, batch_size: int = 64,
                 eval_batch_size: int = 256, num_workers: int | str = 0, seed: int = 0,
                 distill_augment: DistillAugment | None = None, holdout: int = 0) -> None:
        super().__init__()
        self.splits = splits
        self.calib_indices = calib_indices
        self.train_with(distill_augment, holdout)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._augment_gen: torch.Generator | None = None
        self._augment_key: tuple | None = None

    def train_with(self, distill_augment: DistillAugment | None = None, holdout: int = 0) -> None:
        """How training batches are made: augmented by ``distill_augment`` (a distilling trainer
        sets it), the last ``holdout`` calibration images left out."""
        if self.calib_indices is not None and not 0 <= holdout < len(self.calib_indices):
            raise ValueError(f"finetune.holdout_images: {holdout} must be in [0, {len(self.calib_indices) - 1}] "
                             f"(calib.size is {len(self.calib_indices)})")
        self.distill_augment = distill_augment
        self.holdout = holdout

    def workers(self) -> int:
        """Loader processes per loader (:func:`trainer_workers`)."""
        return trainer_workers(self.num_workers, self.trainer)

    def _feeds_gpu(self) -> bool:
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def _loader(self, data: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = EpochShuffle(len(data), self.seed) if shuffle else None
        workers = self.workers()
        return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=self._feeds_gpu(),
                          generator=torch.Generator().manual_seed(self.seed))

    def calibration_set(self, plain: bool = False) -> Dataset:
        data = self.splits.train_plain if plain else self.splits.train
        return data if self.calib_indices is None else Subset(data, self.calib_indices)

    def calibration_batches(self) -> Iterator[torch.Tensor]:
        """The calibration images, unaugmented, in training-size batches, without labels (decoded by
        the loader's workers: POT and BN re-estimation read them once, often before any fit)."""
        loader = DataLoader(self.calibration_set(plain=True), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.workers())
        return (x for x, _ in loader)

    def train_dataloader(self) -> DataLoader:
        data = self.calibration_set()
        if self.holdout:
            data = Subset(data, range(len(data) - self.holdout))
        return self._loader(data, self.batch_size, shuffle=True)

    def holdout_images(self) -> torch.Tensor:
        """The held-out calibration images, unaugmented, as one tensor."""
        from ..search import stack_images

        data = self.calibration_set(plain=True)
        return stack_images(Subset(data, range(len(data) - self.holdout, len(data))))[0]

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.eval, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _augment_generator(self, device: torch.device) -> torch.Generator:
        key = (self.trainer.current_epoch, self.trainer.global_rank, str(device))
        if key != self._augment_key:
            self._augment_gen = torch.Generator(device=device).manual_seed(
                epoch_seed(self.seed, self.trainer.current_epoch, self.trainer.global_rank))
            self._augment_key = key
        return self._augment_gen

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is None or not self.trainer.training:
            return batch
        x, y = batch
        if self.splits.batch_augment is not None:
            x = self.splits.batch_augment(x, self._augment_generator(x.device))
        if self.distill_augment is not None:
            progress = self.trainer.current_epoch / max(self.trainer.max_epochs or 1, 1)
            x = self.distill_augment(x, self._augment_generator(x.device), progress)
        return x, y

    def state_dict(self) -> dict:
        return {"calib_indices": self.calib_indices, "seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("calib_indices")
        if saved is not None and self.calib_indices is not None and list(saved) != list(self.calib_indices):
            from ..common import UniptsError

            raise UniptsError(
                f"ckpt_path: the checkpoint was trained on a different calibration subset ({len(saved)} images) than "
                f"this run's ({len(self.calib_indices)} images); resume with the run's calib.size, calib.seed and "
                "calib.balanced")
