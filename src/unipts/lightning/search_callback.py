"""The reducing-regrowing search as a Lightning callback: it runs when the fit starts.

An adapter: the search, its N:M fallback and the files it leaves are the search package's
(:func:`~unipts.search.search_allocation`, :mod:`unipts.search.report`); here is when it runs, its
result in the checkpoint, the loggers, the progress bar and which rank writes.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only
import torch
from torch import nn
from torch.utils.data import Dataset

from ..common import UniptsError
from ..console import progress_bar
from ..search import AllocationSearch, autocast_dtype, keep_images, search_allocation
from ..search.report import TABLE_FILE, write_plots, write_table
from ..sparse.nm import model_pattern
from .callbacks import log_due
from .contract import NetworkCallback
from .datamodule import trainer_workers

log = logging.getLogger("unipts")

#: The search options (keyword arguments of :func:`search_allocation`) and their defaults; the
#: keys of the ``allocation`` config node that :meth:`SparsitySearch.from_config` accepts.
OPTION_DEFAULTS = {
    name: p.default for name, p in inspect.signature(search_allocation).parameters.items()
    # autocast follows trainer.precision, not the allocation node
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("apply", "on_generation", "autocast")
}
OPTION_KEYS = tuple(OPTION_DEFAULTS)


@rank_zero_only
def _log_generation(record: dict, generations: int) -> None:
    """A log line for the first and the last generation and every few between (every generation's
    figures go to the loggers and the fitness plot)."""
    if not log_due(record["generation"] + 1, generations):
        return
    log.info("search: generation %d/%d: best %.4f mean %.4f best-ever %.4f (%d candidates, %d evaluations)",
             record["generation"] + 1, generations, record["best"], record["mean"], record["best_ever"],
             record["size"], record["evaluations"])


class SparsitySearch(NetworkCallback):
    """Searches per-layer sparsities (method.md section 2) at ``on_fit_start`` and applies the
    winner's masks to the LightningModule's network (through :func:`unipts.sparse.set_masks_`),
    with BN statistics re-estimated for it.

    Any LightningModule will do (:mod:`unipts.lightning.contract`): the network is the attribute
    ``network`` names, else what the module's ``network()`` returns. In the ``setup`` of a fit, before a
    checkpoint is restored, a network without masked layers gets them
    (:func:`unipts.sparse.sparsify`: every Conv2d and Linear), so a dense module can be given.
    Without calibration images (below) the fit is refused there, before any work.

    The calibration images come from ``calibration`` (a data set of ``(image, label)`` or a pair
    of tensors) or else from ``trainer.datamodule.calibration_set(plain=True)``: in their drawn
    order, the first ``bn_images`` re-estimate BN and the next ``fitness_images`` score.

    The result (table, zero counts, genes, history, ``done``) is kept in the callback's state, so
    a run resumed from a checkpoint never searches again. On global rank zero (Lightning's
    ``rank_zero_only.rank``, which a Trainer sets) the callback writes
    ``sparsity_table.yaml`` (loadable by ``allocation=table allocation.path=...``) and two PNGs
    into ``run_dir``, logs ``search/best_fitness``, ``search/mean_fitness`` and
    ``search/best_ever_fitness`` per generation (step = generation) to the trainer's loggers, and
    the PNGs as images to a ``WandbLogger``. Under DDP every rank scores its share of each
    generation and all ranks end with the same table. ``search_seconds`` is the wall time.

    Under an N:M pattern (:mod:`unipts.sparse.nm`) the pattern fixes every layer's sparsity and
    the search has no free variable: it is skipped (``skipped`` says why, and so does
    :meth:`summary`), the network gets the pattern's masks, BN statistics are re-estimated for
    them as for a winner, and no table or plot is written.
    """

    allocates = True

    def __init__(
        self,
        target: float,
        run_dir: str | Path | None = None,
        calibration: Dataset | tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        plots: bool = True,
        progress: bool = True,
        num_workers: int | str = 0,
        network: str | None = None,
        **options,
    ) -> None:
        super().__init__(network)
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"allocation: unknown search option(s) {unknown}; valid: {list(OPTION_KEYS)}")
        self.target = float(target)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.calibration = calibration
        self.options = {**OPTION_DEFAULTS, **options}
        self.plots = plots
        self.progress = progress
        self.num_workers = num_workers  # loader processes decoding the calibration images (data.num_workers)
        self.done = False
        self.table: dict[str, float] | None = None
        self.counts: dict[str, int] | None = None
        self.genes: list[float] | None = None
        self.fitness: float | None = None
        self.history: list[dict] = []
        self.evaluations = 0
        self.forward_images = 0
        self.search_seconds: float | None = None
        self.skipped: str | None = None

    @classmethod
    def from_config(cls, allocation: Mapping, target: float, run_dir: str | Path | None = None,
                    calibration=None, **extra) -> SparsitySearch:
        """From the ``allocation`` config node of ``allocation=search`` (``rule`` is ignored;
        unknown keys are an error)."""
        options = {k: v for k, v in dict(allocation).items() if k != "rule"}
        return cls(target, run_dir, calibration, **options, **extra)

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.calibration is None and not hasattr(trainer.datamodule, "calibration_set"):
            raise UniptsError("SparsitySearch needs calibration images: pass `calibration` (a data set of (image, "
                              "label) or a pair of tensors) or fit with a CalibrationDataModule")
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done and self.skipped:
            log.info("search: skipped (%s)", self.skipped)
            return
        if self.done:
            log.info("search: restored from the checkpoint (%d evaluations, fitness %.4f); not searching again",
                     self.evaluations, self.fitness if self.fitness is not None else float("nan"))
            if trainer.is_global_zero and self.run_dir is not None and not (self.run_dir / TABLE_FILE).exists():
                self._write_table()
            return
        calibration = self.calibration
        if calibration is None:  # setup made sure the data module has them
            calibration = trainer.datamodule.calibration_set(plain=True)
        self.search(self.network_of(pl_module), calibration, trainer)

    def state_dict(self) -> dict:
        return {
            "done": self.done, "target": self.target, "table": self.table, "counts": self.counts,
            "genes": self.genes, "fitness": self.fitness, "history": list(self.history),
            "evaluations": self.evaluations, "forward_images": self.forward_images,
            "search_seconds": self.search_seconds, "options": dict(self.options),
            "skipped": self.skipped,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.done = bool(state_dict.get("done", False))
        self.table = state_dict.get("table")
        self.counts = state_dict.get("counts")
        self.genes = state_dict.get("genes")
        self.fitness = state_dict.get("fitness")
        self.history = list(state_dict.get("history") or [])
        self.evaluations = int(state_dict.get("evaluations") or 0)
        self.forward_images = int(state_dict.get("forward_images") or 0)
        self.search_seconds = state_dict.get("search_seconds")
        self.skipped = state_dict.get("skipped")

    # -- the search itself (also usable without a trainer) -------------------------------------
    def _needed_images(self, available: int) -> int:
        """How many calibration images (first in the drawn order) the search reads: only those
        are stacked into memory."""
        o = self.options
        if o["max_images"] is not None:
            available = min(available, o["max_images"])
        if o["bn_images"] is None or (o["fitness_images"] is None and not o["fitness_on_bn_images"]):
            return available
        return min(available, o["bn_images"] + (0 if o["fitness_on_bn_images"] else o["fitness_images"]))

    def search(self, network: nn.Module, calibration, trainer: pl.Trainer | None = None) -> AllocationSearch | None:
        """Search on ``network`` (sparsified), apply the winner and record it; returns the result
        (``None`` when an N:M pattern leaves nothing to search)."""
        started = time.perf_counter()  # decoding the images is part of the search's cost
        if isinstance(calibration, (tuple, list)):
            images, labels = calibration
        else:  # decoded once, by the loader's workers, and kept at one byte per value
            images, labels = keep_images(calibration, self._needed_images(len(calibration)),
                                         self.options["batch_size"] or 256,
                                         trainer_workers(self.num_workers, trainer))
        o = self.options
        searching = model_pattern(network) is None
        if searching:
            log.info("search: %d generations x %d candidates on %d calibration images (target %.4f, delta %.3f, "
                     "noise %.2g%s)", o["generations"], o["population"], len(labels), self.target, o["delta"],
                     o["noise_std"], ", released quirks" if o["released_quirks"] else "")
        loggers = list(trainer.loggers) if trainer is not None else []
        shown = self.progress and searching and rank_zero_only.rank == 0
        with progress_bar("search", o["generations"], enabled=shown) as advance:
            result = search_allocation(network, self.target, images, labels,
                                       on_generation=self._on_generation(loggers, advance),
                                       autocast=autocast_dtype(getattr(trainer, "precision", None)), **o)
        self._record(result, time.perf_counter() - started)
        if result.skipped:
            log.info("search: skipped: %s (1 - N/M in every layer that can carry the pattern, dense in the others), "
                     "so the reducing-regrowing search has no free variable; applying the pattern's masks",
                     self.skipped)
            return None
        for lg in loggers:
            lg.log_metrics({"search/fitness": result.fitness, "search/seconds": result.seconds},
                           step=len(result.history))
            lg.save()
        log.info("search: done in %.1f s, %d evaluations (%d forward images); winner fitness %.4f, achieved "
                 "sparsity %.6f", result.seconds, result.evaluations, result.forward_images, result.fitness,
                 result.achieved)
        self._write_outputs(network, loggers)
        return result

    def _on_generation(self, loggers, advance):
        """Where each generation's record goes: the log (rank zero), the loggers, the progress bar."""
        def on_generation(record: dict) -> None:
            _log_generation(record, self.options["generations"])
            metrics = {"search/best_fitness": record["best"], "search/mean_fitness": record["mean"],
                       "search/best_ever_fitness": record["best_ever"], "search/generation": record["generation"]}
            for lg in loggers:
                lg.log_metrics(metrics, step=record["generation"])
            advance(f"best {record['best_ever']:.4f}")

        return on_generation

    def _record(self, result: AllocationSearch, seconds: float) -> None:
        self.table, self.counts, self.genes = result.table, result.counts, result.genes
        self.fitness, self.history, self.evaluations = result.fitness, result.history, result.evaluations
        self.forward_images = result.forward_images
        # a skipped search (N:M) searched nothing: no search time, as its summary says
        self.search_seconds, self.skipped = (result.seconds if result.skipped else seconds), result.skipped
        self.done = True

    # -- the allocation callback's protocol (unipts.methods.allocators; the prune pipeline) ------
    def allocate_alone(self, network: nn.Module, calibration, trainer: pl.Trainer | None = None) -> None:
        """Where no fit starts it (a method that does not train): search now."""
        self.search(network, calibration, trainer)

    @property
    def seconds(self) -> float:
        """Wall seconds it took (0 until it ran)."""
        return self.search_seconds or 0.0

    # -- outputs ------------------------------------------------------------------------------
    def _write_table(self) -> Path:
        return write_table(self.run_dir / TABLE_FILE, self.target, self.table, fitness=self.fitness,
                           evaluations=self.evaluations, seconds=self.search_seconds)

    @rank_zero_only
    def _write_outputs(self, network: nn.Module, loggers) -> None:
        """The table and, with ``plots``, the figures, also logged as images to any ``WandbLogger``."""
        if self.run_dir is None:
            return
        self._write_table()
        if not self.plots:
            return
        paths = write_plots(self.run_dir, network, self.target, self.table, self.fitness, self.history)
        from lightning.pytorch.loggers import WandbLogger

        for lg in loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image("search/layer_sparsity", [str(paths[0])])
                lg.log_image("search/fitness_curve", [str(paths[1])])

    def summary(self) -> dict:
        """Fields for summary.json: the search's wall time and table (or why it was skipped)."""
        if self.skipped:
            return {"search_skipped": self.skipped, "search_seconds": self.search_seconds, "search_evaluations": 0,
                    "search_forward_images": 0}
        return {"search_seconds": self.search_seconds, "search_fitness": self.fitness,
                "search_evaluations": self.evaluations, "search_forward_images": self.forward_images,
                "searched_table": dict(self.table or {})}
