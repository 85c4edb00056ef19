"""The genetic algorithm of UniPTS's reducing-regrowing search (method.md section 2).

Plain PyTorch on the CPU, with no knowledge of networks or of torch.distributed: it only calls
``score(population) -> fitness``, a ``[pop, n_genes]`` float64 tensor in, a ``[pop]`` tensor out.
Every random draw comes from one ``torch.Generator`` seeded with ``seed``, so the same seed and
the same scores give the same search, on every process that runs it.

Released behaviour (``released_quirks=True``):

- generation 0 is the all-equal (zero) gene vector plus ``population - 1`` vectors in U[0, 1);
- truncation selection of the ``parents`` fittest of the generation just scored;
- ``n_crossover`` children by uniform crossover of two random parents (the first slot always
  reset to the all-equal vector), ``n_mutation`` children by mutation of a random parent (each
  gene multiplied by ``1 + N(0, 1)`` with probability ``mutation_rate``);
- the random newcomers meant to refill the population are drawn and thrown away, so every
  generation after the first has ``n_crossover + n_mutation`` (24) candidates;
- no elitism, no best-ever record: after the last generation the last generation is scored once
  more and the argmax of that re-evaluation is the answer.

Corrected behaviour (the default): the newcomers are kept, so every generation has
``population`` candidates; the best candidate seen so far (the elite), when it comes from an
earlier generation, joins the selection with its recorded fitness, without spending an
evaluation on it, so it is always a parent and the best-ever fitness never decreases; the answer
is the best candidate ever scored (first found on ties). Both behaviours spend ``generations * population`` evaluations at the released sizes
(25 + 24 * 24 + 24 = 625 released, 25 * 25 corrected).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..checks import check_number

Score = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GAConfig:
    population: int = 25
    generations: int = 25
    parents: int = 10
    mutation_rate: float = 0.1
    released_quirks: bool = False
    seed: int = 0
    patience: int | None = None  # stop after this many generations without a better best-ever; None: never

    def __post_init__(self) -> None:
        check_number(self.population, "population", low=2, integer=True)
        check_number(self.generations, "generations", low=1, integer=True)
        check_number(self.parents, "parents", low=1, integer=True)
        check_number(self.mutation_rate, "mutation_rate", low=0.0, high=1.0)
        check_number(self.patience, "patience", low=1, integer=True, allow_none=True)


def child_counts(population: int) -> tuple[int, int, int]:
    """(crossover, mutation, newcomer) counts of one generation: 12, 12, 1 for 25."""
    n_cross = (population - 1) // 2
    n_mut = (population - 1) // 2
    return n_cross, n_mut, population - n_cross - n_mut


@dataclass
class SearchResult:
    genes: torch.Tensor  # [n_genes] float64, the winner
    fitness: float  # the winner's recorded fitness
    history: list[dict] = field(default_factory=list)  # one record per generation
    evaluations: int = 0  # candidates scored, the final re-evaluation included
    final_population: torch.Tensor | None = None
    final_fitness: torch.Tensor | None = None


def _random(n: int, n_genes: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, n_genes, generator=gen, dtype=torch.float64)


def crossover(parents: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform crossover of two random parents per child; child 0 is the all-equal vector."""
    if n <= 0:
        return parents.new_empty(0, parents.shape[1])
    k = parents.shape[0]
    a = torch.randint(k, (n,), generator=gen)
    b = torch.randint(k, (n,), generator=gen)
    take_a = torch.rand(n, parents.shape[1], generator=gen) < 0.5
    children = torch.where(take_a, parents[a], parents[b])
    children[0] = 0.0
    return children


def mutate(parents: torch.Tensor, n: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Each child: a random parent whose genes are each multiplied by ``1 + N(0, 1)`` with
    probability ``rate``."""
    if n <= 0:
        return parents.new_empty(0, parents.shape[1])
    src = parents[torch.randint(parents.shape[0], (n,), generator=gen)]
    hit = torch.rand(src.shape, generator=gen) < rate
    factor = 1.0 + torch.randn(src.shape, generator=gen, dtype=torch.float64)
    return torch.where(hit, src * factor, src)


def _check_scores(scores: torch.Tensor, n: int) -> torch.Tensor:
    scores = torch.as_tensor(scores, dtype=torch.float64).detach().cpu().flatten()
    if scores.numel() != n:
        raise ValueError(f"score() returned {scores.numel()} values for {n} candidates")
    return scores


def genetic_search(
    score: Score,
    n_genes: int,
    config: GAConfig | None = None,
    on_generation: Callable[[dict], None] | None = None,
    **overrides,
) -> SearchResult:
    """Run the search; ``overrides`` are :class:`GAConfig` fields (``population=10``, ...).

    ``on_generation(record)`` is called after each generation with the record appended to the
    history: ``generation``, ``size``, ``best``, ``mean`` (of the candidates scored in that
    generation), ``best_ever`` and ``evaluations`` (cumulative). With ``patience`` the search
    stops early once the best-ever fitness has not improved for that many generations.
    """
    cfg = config or GAConfig()
    if overrides:
        cfg = GAConfig(**{**cfg.__dict__, **overrides})
    if n_genes < 1:
        raise ValueError(f"n_genes: {n_genes} must be >= 1")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    n_cross, n_mut, n_new = child_counts(cfg.population)
    n_parents = min(cfg.parents, cfg.population)

    population = torch.cat([torch.zeros(1, n_genes, dtype=torch.float64), _random(cfg.population - 1, n_genes, gen)])
    elite_genes: torch.Tensor | None = None
    elite_fit = float("-inf")
    history: list[dict] = []
    evaluations = 0
    scores = torch.empty(0, dtype=torch.float64)
    stale = 0  # generations since the best-ever fitness last improved

    for g in range(cfg.generations):
        scores = _check_scores(score(population), population.shape[0])
        evaluations += population.shape[0]
        best_i = int(torch.argmax(scores))  # first index on ties
        elite_is_new = float(scores[best_i]) > elite_fit
        if elite_is_new:
            elite_fit, elite_genes = float(scores[best_i]), population[best_i].clone()
        stale = 0 if elite_is_new else stale + 1
        record = {
            "generation": g, "size": int(population.shape[0]), "best": float(scores[best_i]),
            "mean": float(scores.mean()), "best_ever": elite_fit, "evaluations": evaluations,
        }
        history.append(record)
        if on_generation is not None:
            on_generation(record)
        if g == cfg.generations - 1 or (cfg.patience is not None and stale >= cfg.patience):
            break
        pool, pool_scores = population, scores
        if not cfg.released_quirks and not elite_is_new:  # an elite from an earlier generation competes
            pool = torch.cat([elite_genes.unsqueeze(0), population])
            pool_scores = torch.cat([torch.tensor([elite_fit], dtype=torch.float64), scores])
        order = torch.sort(pool_scores, descending=True, stable=True).indices
        parents = pool[order[:n_parents]]
        children = [crossover(parents, n_cross, gen), mutate(parents, n_mut, cfg.mutation_rate, gen)]
        newcomers = _random(n_new, n_genes, gen)  # drawn in both modes: the same stream of draws
        if not cfg.released_quirks:
            children.append(newcomers)
        population = torch.cat(children)

    if cfg.released_quirks:
        # The released pick: the argmax of a fresh evaluation of the last generation.
        scores = _check_scores(score(population), population.shape[0])
        evaluations += population.shape[0]
        best_i = int(torch.argmax(scores))
        return SearchResult(population[best_i].clone(), float(scores[best_i]), history, evaluations,
                            population, scores)
    return SearchResult(elite_genes, elite_fit, history, evaluations, population, scores)
