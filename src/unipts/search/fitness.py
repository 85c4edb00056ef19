"""Scoring a candidate sparsity distribution on one working copy of the masked network.

A candidate's genes are decoded by the reducing-regrowing rule
(:func:`unipts.sparse.allocation.regrow_decode`) into per-layer zero counts; its masks are
written in place into the network's ``mask`` buffers (each layer's magnitude order is computed
once, so a mask for ``k`` zeros is one comparison); BatchNorm statistics are reset and
re-estimated on the BN images with Gaussian input noise; the candidate is scored in eval mode on
the fitness images: top-1 against their labels, or, without labels, agreement with (or KL
divergence from) the dense network's outputs on them. No autograd, no copy of the network: an
evaluation costs two forward passes (one over the BN images, one over the fitness images) and a
few elementwise ops per layer. The images may be kept compactly (:class:`CompactImages`, one
byte per value, turned into floats a batch at a time on the network's device), and the passes
may run under autocast (bf16/fp16), for ImageNet-sized calibration sets.

Under torch.distributed, :meth:`Fitness.__call__` scores a strided share of the population on
each rank and gathers the scores, so every rank gets the same tensor.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..objectives import kl_divergence
from ..sparse.allocation import regrow_decode
from ..sparse.bn import reestimate_bn_
from ..sparse.masked import masked_layers
from ..sparse.nm import format_pattern, model_pattern
from .images import CompactImages, first_batches

Images = torch.Tensor | CompactImages

RELEASED_NOISE_STD = 1e-6
DEFAULT_NOISE_STD = 0.1
#: What a candidate is scored by: top-1 against labels, or label-free against the dense network:
#: the fraction of images whose top class agrees with its, or minus the mean KL divergence of
#: the candidate's class distribution from its (smooth: every image counts, not only flips).
FITNESS_METRICS = ("top1", "agreement", "kl")


def stack_images(dataset: Dataset, n: int | None = None, batch_size: int = 256,
                 num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (all if None) ``(image, label)`` pairs of ``dataset`` as two float tensors
    (:func:`~unipts.search.images.keep_images` keeps them compactly instead)."""
    labels: list[torch.Tensor] = []
    images = torch.cat(list(first_batches(dataset, n, batch_size, num_workers, labels)))
    return images, torch.cat(labels).long()


def split_calibration(
    images: torch.Tensor, labels: torch.Tensor | None, bn_images: int | None = None, fitness_images: int | None = None,
    fitness_on_bn_images: bool = False, max_images: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(bn_x, fitness_x, fitness_y)`` from calibration images in their drawn (random) order.

    ``max_images`` keeps only the first that many of the set (``None``: all of it): every
    evaluation passes its BN and fitness images through the network, so they set the search's
    cost. The BN images are the first ``bn_images``, the fitness images the next
    ``fitness_images`` (disjoint). ``None`` splits the (kept) set in half (BN images get the odd
    one), or with ``fitness_on_bn_images`` uses it whole for both (the released behaviour: score
    on the BN images themselves).
    """
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"allocation.max_images: {max_images} must be >= 1 (or null: the whole calibration set)")
        images, labels = images[:max_images], _take(labels, slice(max_images))
    n = len(images)
    if fitness_on_bn_images:
        nb = n if bn_images is None else bn_images
        if not 0 < nb <= n:
            raise ValueError(f"allocation.bn_images: {nb} must lie in 1..{n} (the calibration set)")
        return images[:nb], images[:nb], _take(labels, slice(nb))
    if n < 2:
        raise ValueError("the search needs at least 2 calibration images (BN and fitness images are disjoint)")
    nb = (n + 1) // 2 if bn_images is None else bn_images
    nf = n - nb if fitness_images is None else fitness_images
    if nb < 1 or nf < 1 or nb + nf > n:
        raise ValueError(
            f"allocation.bn_images ({nb}) + allocation.fitness_images ({nf}) must be >= 1 each and together at most "
            f"the calibration set ({n}); or set allocation.fitness_on_bn_images=true"
        )
    return images[:nb], images[nb:nb + nf], _take(labels, slice(nb, nb + nf))


def split_sizes(calibration_size: int, bn_images: int | None = None, fitness_images: int | None = None,
                fitness_on_bn_images: bool = False, max_images: int | None = None) -> tuple[int, int]:
    """``(BN images, fitness images)`` of one evaluation for a calibration set of
    ``calibration_size`` images, split as :func:`split_calibration` splits it."""
    bn_x, fit_x, _ = split_calibration(torch.empty(calibration_size, 0), None, bn_images, fitness_images,
                                       fitness_on_bn_images, max_images)
    return len(bn_x), len(fit_x)


def images_per_evaluation(calibration_size: int, bn_images: int | None = None, fitness_images: int | None = None,
                          fitness_on_bn_images: bool = False, max_images: int | None = None) -> int:
    """Images one candidate's evaluation passes through the network (its BN pass and its scoring
    pass): with the evaluation count, the search's cost, known before (or after) it runs."""
    return sum(split_sizes(calibration_size, bn_images, fitness_images, fitness_on_bn_images, max_images))


def _take(labels: torch.Tensor | None, part: slice) -> torch.Tensor | None:
    return None if labels is None else labels[part]


def _mix_seed(*parts: int) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(torch.split(x, batch_size)) if batch_size and batch_size < len(x) else [x]


def _image_batches(x: Images, batch_size: int) -> Iterator[torch.Tensor]:
    """Float batches of plain or compact images (compact ones decoded one batch at a time)."""
    return x.batches(batch_size) if isinstance(x, CompactImages) else iter(_batches(x, batch_size))


def autocast_dtype(precision: str | None) -> torch.dtype | None:
    """The autocast dtype of a Lightning ``trainer.precision`` value (None: full precision)."""
    precision = str(precision or "32")
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


class Fitness:
    """Top-1 of a candidate on one working network, its masks applied in place.

    ``network`` must already be sparsified (:func:`unipts.sparse.sparsify`); its weights are
    never changed, only its ``mask`` buffers and BatchNorm statistics. ``noise_std`` is the
    Gaussian input noise of the BN pass (the released value is 1e-6). With
    ``resample_noise=False`` (default) the noise is drawn once and shared by every candidate
    (common random numbers: the fitness is a deterministic function of the genes and candidates
    are compared on the same perturbation); with ``True`` it is drawn afresh per evaluation
    from a seed of (``seed``, call, candidate index), the same on whichever rank scores it.
    ``clip_overshoot=True`` decodes as the released code does (achieved sparsity overshoots).
    ``autocast`` (a dtype, e.g. ``torch.bfloat16``) runs the forward passes under autocast.

    ``metric`` is one of :data:`FITNESS_METRICS`. The label-free ones compare with the dense
    network, which is ``network`` itself with every mask set to one (weights are never changed):
    its outputs on the fitness images are computed once here, so ``network``'s BatchNorm
    statistics must still be the dense network's when the Fitness is made. ``fitness_labels``
    may then be None.
    """

    def __init__(
        self,
        network: nn.Module,
        target: float,
        bn_images: torch.Tensor,
        fitness_images: torch.Tensor,
        fitness_labels: torch.Tensor | None,
        *,
        delta: float = 0.05,
        noise_std: float = DEFAULT_NOISE_STD,
        resample_noise: bool = False,
        batch_size: int = 256,
        clip_overshoot: bool = False,
        seed: int = 0,
        metric: str = "top1",
        autocast: torch.dtype | None = None,
    ) -> None:
        if metric not in FITNESS_METRICS:
            raise ValueError(f"allocation.fitness: {metric!r} is not one of {list(FITNESS_METRICS)}")
        if metric == "top1" and fitness_labels is None:
            raise ValueError("allocation.fitness=top1 needs labelled calibration images; use agreement or kl")
        self.metric = metric
        self.network = network
        self.target = float(target)
        self.delta = float(delta)
        self.noise_std = float(noise_std)
        self.resample_noise = resample_noise
        self.batch_size = int(batch_size)
        self.clip_overshoot = clip_overshoot
        self.seed = int(seed)
        self.autocast = autocast
        self.calls = 0
        self.evaluations = 0
        self.layers = list(masked_layers(network))
        if not self.layers:
            raise ValueError("the network has no masked layers: sparsify() it first")
        pattern = model_pattern(network)
        if pattern is not None:
            raise ValueError(f"the search has nothing to choose under sparsity.pattern={format_pattern(pattern)}: "
                             "the pattern fixes every layer's sparsity (use nm_allocation)")
        if _distributed()[1] > 1 and any(isinstance(m, nn.SyncBatchNorm) for m in network.modules()):
            raise ValueError("the search cannot run on SyncBatchNorm under DDP (each rank scores different "
                             "candidates); convert it back to BatchNorm or search before converting")
        self.names = [name for name, _ in self.layers]
        self.numels = {name: layer.weight.numel() for name, layer in self.layers}
        self.device = self.layers[0][1].weight.device
        with torch.no_grad():
            # rank[i] = position of weight i in ascending magnitude order (ties by position), so
            # the mask for k zeros is ``rank >= k``: the k smallest magnitudes pruned.
            self._ranks = []
            for _, layer in self.layers:
                flat = layer.weight.detach().abs().flatten()
                order = torch.sort(flat, stable=True).indices
                rank = torch.empty(flat.numel(), dtype=torch.int32 if flat.numel() < 2**31 else torch.int64,
                                   device=flat.device)
                rank[order] = torch.arange(flat.numel(), dtype=rank.dtype, device=flat.device)
                self._ranks.append(rank.view_as(layer.weight))
        self._applied: list[int | None] = [None] * len(self.layers)
        self.bn_x = bn_images.to(self.device)
        self.fit_x = fitness_images.to(self.device)
        if len(self.bn_x) == 0 or len(self.fit_x) == 0:
            raise ValueError("the search needs at least one BN image and one fitness image")
        if metric == "top1":
            self.fit_y = fitness_labels.to(self.device).long()
            if len(self.fit_x) != len(self.fit_y):
                raise ValueError(f"{len(self.fit_x)} fitness images but {len(self.fit_y)} labels")
            self._targets = _batches(self.fit_y, self.batch_size)
        else:
            self._targets = self._dense_outputs()

    def _precision(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _fit_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return zip(_image_batches(self.fit_x, self.batch_size), self._targets)

    @torch.inference_mode()
    def _dense_outputs(self) -> list[torch.Tensor]:
        """The dense network's log-probabilities on the fitness images, batch by batch."""
        saved = [layer.mask.clone() for _, layer in self.layers]
        was_training = self.network.training
        try:
            for _, layer in self.layers:
                layer.mask.fill_(1)
            self.network.eval()
            with self._precision():
                return [torch.log_softmax(self.network(x).float(), 1)
                        for x in _image_batches(self.fit_x, self.batch_size)]
        finally:
            for (_, layer), mask in zip(self.layers, saved):
                layer.mask.copy_(mask)
            self.network.train(was_training)

    # -- decoding and masks -------------------------------------------------------------------
    def decode(self, genes: torch.Tensor | Sequence[float] | None) -> dict[str, int]:
        """Per-layer zero counts of a gene vector (exact global target unless clipping)."""
        return regrow_decode(self.numels, self.target, self.delta, genes, clip_overshoot=self.clip_overshoot)

    @torch.no_grad()
    def apply_(self, counts: dict[str, int]) -> None:
        """Write the magnitude masks for ``counts`` into the network's mask buffers (in place).
        ``target_sparsity`` is left alone: the caller's :func:`set_masks_` sets it for the winner."""
        for i, (name, layer) in enumerate(self.layers):
            k = int(counts[name])
            if self._applied[i] == k:
                continue
            layer.mask.copy_(self._ranks[i] >= k)
            self._applied[i] = k

    def forget_applied(self) -> None:
        """Call when something else changed the masks, so the next candidate rewrites all of them."""
        self._applied = [None] * len(self.layers)

    # -- evaluation ---------------------------------------------------------------------------
    def _noisy_bn_batches(self, noise_seed: int | None) -> Iterator[torch.Tensor]:
        """The BN images with their Gaussian noise. Without ``resample_noise`` every candidate
        gets the same draw (each batch's from a seed of its own, so nothing but the images is
        kept); with it, a draw of its own seeded by ``noise_seed``."""
        g = torch.Generator(device=self.device)
        if self.resample_noise:
            g.manual_seed(_mix_seed(self.seed, "noise", noise_seed))
        for i, x in enumerate(_image_batches(self.bn_x, self.batch_size)):
            if self.noise_std:
                if not self.resample_noise:
                    g.manual_seed(_mix_seed(self.seed, "noise", i))
                x = x + self.noise_std * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            yield x

    @torch.inference_mode()
    def reestimate_bn_(self, noise_seed: int | None = None) -> None:
        """Re-estimate BN statistics on the (noisy) BN images for the masks now applied."""
        with self._precision():
            reestimate_bn_(self.network, self._noisy_bn_batches(noise_seed))

    @torch.inference_mode()
    def measure(self) -> float:
        """The fitness metric on the fitness images in eval mode (the network's mode is restored):
        higher is better for each."""
        was_training = self.network.training
        self.network.eval()
        try:
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for x, target in self._fit_batches():
                with self._precision():
                    logits = self.network(x)
                if self.metric == "top1":
                    total += (logits.argmax(1) == target).sum()
                elif self.metric == "agreement":
                    total += (logits.argmax(1) == target.argmax(1)).sum()
                else:  # minus KL(dense || candidate), summed over images
                    total -= kl_divergence(target, torch.log_softmax(logits.float(), 1)).sum()
        finally:
            self.network.train(was_training)
        return float(total) / len(self.fit_x)

    def top1(self) -> float:
        """Top-1 on the labelled fitness images (``metric="top1"``)."""
        if self.metric != "top1":
            raise ValueError(f"top1 needs metric='top1' (this Fitness scores {self.metric})")
        return self.measure()

    def evaluate(self, genes, noise_seed: int | None = None) -> float:
        """The fitness of one gene vector: decode, mask in place, re-estimate BN, score."""
        self.apply_(self.decode(genes))
        self.reestimate_bn_(noise_seed)
        self.evaluations += 1
        return self.measure()

    def score(self, population: torch.Tensor, indices: Sequence[int] | None = None) -> torch.Tensor:
        """Fitness of each row of ``population`` (``indices``: their positions in the full
        population, for the per-candidate noise seeds), on this process only."""
        indices = range(len(population)) if indices is None else indices
        return torch.tensor([self.evaluate(row, (self.calls, int(i)) if self.resample_noise else None)
                             for row, i in zip(population, indices)], dtype=torch.float64)

    def __call__(self, population: torch.Tensor) -> torch.Tensor:
        """Score a population; under torch.distributed each rank scores a share, all ranks
        return the full, identical tensor. Every rank must call it with the same population."""
        try:
            return sharded_score(self.score, population, self.device)
        finally:
            self.calls += 1


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sharded_score(score, population: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``score(rows, indices)`` on rank r's strided share (rows r, r + W, ...), gathered with
    ``all_gather`` so that every rank returns all scores in population order. Without an
    initialised process group (or with one process) it is ``score(population, all indices)``."""
    rank, world = _distributed()
    n = len(population)
    if world == 1:
        return score(population, list(range(n)))
    import torch.distributed as dist

    mine = list(range(rank, n, world))
    local = score(population[mine], mine) if mine else torch.empty(0, dtype=torch.float64)
    per_rank = -(-n // world)
    # gloo gathers CPU tensors; NCCL needs them on the rank's GPU.
    if device is None or dist.get_backend() != "nccl":
        device = torch.device("cpu")
    buf = torch.full((per_rank,), float("nan"), dtype=torch.float64, device=device)
    buf[:len(mine)] = local.to(device)
    gathered = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(gathered, buf)
    out = torch.empty(n, dtype=torch.float64)
    for r, part in enumerate(gathered):
        idx = list(range(r, n, world))
        out[idx] = part[:len(idx)].cpu()
    return out


# -- the whole search on a network ------------------------------------------------------------
@dataclass
class AllocationSearch:
    """What a search found: per-layer zero counts and sparsities, and how it got there.
    ``skipped`` says why nothing was searched (an N:M pattern fixes the allocation): genes and
    fitness are then None and nothing was evaluated."""

    counts: dict[str, int]
    table: dict[str, float]  # layer -> sparsity (counts / numel, full float precision)
    genes: list[float] | None
    fitness: float | None
    history: list[dict]
    evaluations: int
    seconds: float

    numels: dict[str, int]
    skipped: str | None = None
    images_per_evaluation: int = 0  # a BN pass and a scoring pass: the search's cost is evaluations x this

    @property
    def forward_images(self) -> int:
        """Images the candidates' evaluations passed through the network (the one-off passes
        before and after the search left out): what a cheaper search is measured by."""
        return self.evaluations * self.images_per_evaluation

    @property
    def achieved(self) -> float:
        """The achieved global sparsity over the masked layers."""
        return sum(self.counts.values()) / sum(self.numels.values())


def _bn_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": buf.clone() for name, m in network.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) for key, buf in m.named_buffers(recurse=False)}


def search_allocation(
    network: nn.Module,
    target: float,
    images: Images,
    labels: torch.Tensor | None,
    *,
    delta: float = 0.05,
    population: int = 25,
    generations: int = 25,
    parents: int = 10,
    mutation_rate: float = 0.1,
    bn_images: int | None = None,
    fitness_images: int | None = None,
    fitness_on_bn_images: bool = False,
    max_images: int | None = None,
    noise_std: float = DEFAULT_NOISE_STD,
    resample_noise: bool = False,
    batch_size: int = 256,
    released_quirks: bool = False,
    seed: int = 0,
    fitness: str = "top1",
    patience: int | None = None,
    autocast: torch.dtype | None = None,
    apply: bool = True,
    on_generation=None,
) -> AllocationSearch:
    """The reducing-regrowing search of per-layer sparsities on a sparsified ``network``.

    ``images``/``labels`` are the calibration set in its drawn order (see
    :func:`split_calibration`). With ``apply`` (default) the network ends with the winner's
    magnitude masks (through :func:`unipts.sparse.set_masks_`) and BN statistics re-estimated
    for them; otherwise its masks and BN buffers are restored. Weights are never changed.
    ``released_quirks`` gives the released GA and the released (overshooting) decode.
    ``fitness`` is the metric of :class:`Fitness` (``labels`` may be None for the label-free ones).
    ``images`` may be a tensor or :class:`CompactImages`; ``autocast`` as in :class:`Fitness`.

    Under an N:M pattern there is nothing to search: the result is the pattern's allocation
    (:func:`_pattern_allocation`), ``skipped`` saying why.
    """
    from ..sparse.masks import set_masks_
    from .genetic import GAConfig, genetic_search

    if model_pattern(network) is not None:
        return _pattern_allocation(network, target, images, labels, apply, bn_images=bn_images,
                                   fitness_images=fitness_images, fitness_on_bn_images=fitness_on_bn_images,
                                   max_images=max_images, noise_std=noise_std, batch_size=batch_size, seed=seed)
    started = time.perf_counter()
    bn_x, fit_x, fit_y = split_calibration(images, labels, bn_images, fitness_images, fitness_on_bn_images,
                                         max_images)
    fitness = Fitness(network, target, bn_x, fit_x, fit_y, delta=delta, noise_std=noise_std,
                      resample_noise=resample_noise, batch_size=batch_size, clip_overshoot=released_quirks, seed=seed,
                      metric=fitness, autocast=autocast)
    saved_masks = {name: layer.mask.clone() for name, layer in fitness.layers} if not apply else None
    saved_bn = _bn_state(network) if not apply else None
    ga = GAConfig(population=population, generations=generations, parents=parents, mutation_rate=mutation_rate,
                  released_quirks=released_quirks, seed=seed, patience=patience)
    result = genetic_search(fitness, len(fitness.names), ga, on_generation=on_generation)
    counts = fitness.decode(result.genes)
    with torch.no_grad():
        if apply:
            set_masks_(network, counts)
            fitness.forget_applied()
            fitness.reestimate_bn_()
        else:
            for name, layer in fitness.layers:
                layer.mask.copy_(saved_masks[name])
            state = dict(network.named_buffers())
            for key, value in saved_bn.items():
                state[key].copy_(value)
    table = {k: counts[k] / fitness.numels[k] for k in fitness.names}
    return AllocationSearch(counts, table, [float(v) for v in result.genes], result.fitness, result.history,
                            result.evaluations, time.perf_counter() - started, dict(fitness.numels),
                            images_per_evaluation=len(bn_x) + len(fit_x))


@torch.no_grad()
def _pattern_allocation(network: nn.Module, target: float, images: Images, labels: torch.Tensor | None,
                        apply: bool, *, bn_images: int | None, fitness_images: int | None, fitness_on_bn_images: bool,
                        max_images: int | None, noise_std: float, batch_size: int, seed: int) -> AllocationSearch:
    """The search's answer when an N:M pattern fixes every layer's sparsity: the pattern's masks,
    with BN statistics re-estimated for them on the BN images as for a winner (with ``apply``)."""
    from ..sparse.allocation import layer_numels
    from ..sparse.masks import set_masks_
    from ..sparse.nm import nm_allocation

    counts = nm_allocation(network, target)
    numels = layer_numels(network)
    if apply:
        set_masks_(network, counts)
        bn_x, _, _ = split_calibration(images, labels, bn_images, fitness_images, fitness_on_bn_images, max_images)
        device = next(network.parameters()).device
        generator = torch.Generator(device=device).manual_seed(int(seed))
        with torch.inference_mode():
            batches = _image_batches(bn_x.to(device), int(batch_size or 256))
            reestimate_bn_(network, batches, float(noise_std), generator)
    return AllocationSearch(counts, {k: counts[k] / numels[k] for k in numels}, None, None, [], 0, 0.0, numels,
                            skipped=f"sparsity.pattern={format_pattern(model_pattern(network))} fixes every "
                                    "layer's sparsity")
