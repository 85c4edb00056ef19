"""Allocators: how a method's student gets its per-layer sparsities. A fixed rule
(:data:`unipts.sparse.RULES`: uniform, global, ERK, LAMP, l2norm, regrow, table) gives them at
once; UniPTS's reducing-regrowing search finds them when the fit starts. Both behind one interface,
so that nothing else needs to know which one a run uses.

The ``allocation`` config node builds one (:func:`build_allocator`): ``allocation.rule`` names it,
the node's other keys are its options. The node carries the search's options whatever the rule (one
sweep across methods can set them); a fixed rule reads only its own.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..common import UniptsError
from ..spec.fields import existing_path, in_engine_words, number as _number, random_seed

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch import nn

    from ..spec import PruneSpec
    from .job import Job

log = logging.getLogger("unipts")

SEARCH = "search"
#: the fixed rules that can spread a sparsity that changes during training (a table or the
#: regrow decode each fix one target)
GRADUAL_RULES = ("uniform", "global", "erk", "lamp", "l2norm")


@dataclass(frozen=True)
class Allocator:
    """Gives a student its per-layer sparsities. ``rule``: its name, as the summary reports it."""

    rule: str
    options: dict = field(default_factory=dict)

    #: whether it knows the per-layer zero counts before any training (a one-shot pruner needs them)
    fixed = True
    #: whether it can spread a sparsity that changes during training (gradual pruning)
    gradual = False

    def check(self, spec: PruneSpec) -> None:
        """Refuse, before any work, settings it cannot run with."""

    def check_network(self, network: nn.Module, target: float) -> None:
        """Refuse a network it cannot allocate ``target`` over (checked once the network is built)."""

    def counts(self, student: nn.Module, target: float) -> dict[str, int]:
        """Each masked layer's number of zeros at global sparsity ``target``."""
        raise NotImplementedError

    def assign_(self, job: Job) -> pl.Callback | None:
        """Give ``job.student`` its masks; an allocator that decides during the fit returns the
        callback that does (it also runs on its own where there is no fit)."""
        from ..sparse import set_masks_

        set_masks_(job.student, self.counts(job.student, job.target))
        return None


@dataclass(frozen=True)
class FixedRule(Allocator):
    """One of :data:`unipts.sparse.RULES`, with the options its function takes."""

    def __post_init__(self) -> None:
        from ..sparse import RULES

        if self.rule == "table":
            path = self.options.get("path")
            if path is None:
                raise UniptsError("allocation.path: required with allocation=table (a YAML file of layer: sparsity)")
            existing_path(path, "allocation.path")
        if self.rule == "regrow":
            _number(self.options.get("delta"), "allocation.delta", low=0.0, high=1.0, high_open=True)
        accepted = inspect.signature(RULES[self.rule]).parameters
        object.__setattr__(self, "options", {k: v for k, v in self.options.items() if k in accepted})

    @property
    def gradual(self) -> bool:  # type: ignore[override]
        return self.rule in GRADUAL_RULES

    def check_network(self, network: nn.Module, target: float) -> None:
        self.counts(network, target)  # a table that does not fit the network says so here

    def counts(self, student: nn.Module, target: float) -> dict[str, int]:
        from ..sparse import allocate

        try:
            return allocate(student, self.rule, target, **self.options)
        except (ValueError, FileNotFoundError) as exc:  # its messages name the configuration key
            raise UniptsError(str(exc)) from exc

    def assign_(self, job: Job) -> None:
        if self.rule == "regrow":
            log.info("allocation: the all-equal reducing-regrowing table (delta=%s), no search", self.options["delta"])
        return super().assign_(job)


@dataclass(frozen=True)
class Search(Allocator):
    """UniPTS's reducing-regrowing evolutionary search (:class:`unipts.lightning.SparsitySearch`):
    it searches when the fit starts, so a resumed fit restores its result instead of searching
    again; until then the student holds the all-equal reducing-regrowing table."""

    fixed = False

    def __post_init__(self) -> None:
        from ..search import GAConfig

        o = self.options
        _number(o.get("delta"), "allocation.delta", low=0.0, high=1.0, high_open=True)
        with in_engine_words("allocation"):  # the genetic algorithm's own rules, in its words
            GAConfig(**{k: o.get(k) for k in ("population", "generations", "parents", "mutation_rate", "patience")})
        # The algorithm would take all of a smaller population as parents; a user asking for more means something else.
        _number(o.get("parents"), "allocation.parents", low=1, high=o.get("population"), integer=True)
        _number(o.get("noise_std"), "allocation.noise_std", low=0.0)
        random_seed(o.get("seed"), "allocation.seed")
        _number(o.get("batch_size"), "allocation.batch_size", low=1, integer=True)
        from ..search.fitness import FITNESS_METRICS

        if o.get("fitness") not in (None, *FITNESS_METRICS):
            raise UniptsError(f"allocation.fitness: {o.get('fitness')!r} is not one of {list(FITNESS_METRICS)}")
        for key in ("bn_images", "fitness_images", "max_images"):
            _number(o.get(key), f"allocation.{key}", low=1, integer=True, allow_none=True)

    def check(self, spec: PruneSpec) -> None:
        """Its images against the calibration set it draws them from."""
        o = self.options
        if spec.unlabeled is not None and o.get("fitness") in (None, "top1"):
            raise UniptsError(f"allocation.fitness: top1 scores against labels, and the {spec.unlabeled} images "
                              "have none; valid here: agreement, kl")
        calib_size, cap, on_bn = spec.calib.size, o.get("max_images"), o.get("fitness_on_bn_images")
        bn, fit = o.get("bn_images"), o.get("fitness_images")
        if calib_size is None:  # the whole training split: its size is known only once the data is loaded
            return
        key = "allocation.max_images" if cap is not None and cap < calib_size else "calib.size"
        size = min(calib_size, cap or calib_size)
        what = f"{key} is {size}"
        if size < 2 and not on_bn:
            raise UniptsError(f"{key}: 1 image is too few for allocation=search, which re-estimates BatchNorm on some "
                              "calibration images and scores others; valid: 2 or more")
        used = (bn or 0) + (0 if on_bn else (fit or 0))
        if used > size:
            raise UniptsError(f"allocation.bn_images + allocation.fitness_images: {used} images, but {what}; "
                              "the search draws both from the calibration set")
        if bn is not None and fit is None and not on_bn and bn >= size:
            raise UniptsError(f"allocation.bn_images: {bn} leaves no calibration image to score ({what})")

    def assign_(self, job: Job) -> pl.Callback:
        from ..lightning import SparsitySearch
        from ..sparse import allocate, set_masks_

        set_masks_(job.student, allocate(job.student, "regrow", job.target, delta=self.options["delta"]))
        return SparsitySearch.from_config(self.options, job.target, job.run_dir, progress=job.hardware.progress_bar,
                                          num_workers=job.data.num_workers)


def build_allocator(node: dict) -> Allocator:
    """The allocator the ``allocation`` node names with ``rule``."""
    from ..sparse import RULES

    rule = node.get("rule")
    options = {k: v for k, v in node.items() if k != "rule"}
    if rule == SEARCH:
        return Search(rule, options)
    if rule not in RULES:
        raise UniptsError(f"allocation.rule: unknown rule {rule!r}; valid: {sorted([*RULES, SEARCH])}")
    return FixedRule(rule, options)
