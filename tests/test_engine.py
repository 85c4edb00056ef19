"""Behaviour of the sparsity engine that the mutation pass (``make mutation``) showed untested: each
test here fails under at least one mutant that survived the rest of the suite. Fast, in-process."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from unipts.objectives import BaseDecayedKL, FeatureTap, PlainKD, feature_distance
from unipts.sparse import masked_layers, sparsify

Z_S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
Z_T = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


# -- objectives --------------------------------------------------------------------------------

def test_objective_defaults_are_the_released_settings():
    loss = BaseDecayedKL()
    assert (loss.teacher_temperature, loss.student_temperature, loss.tau0, loss.gamma) == (4.0, 1.0, 8.0, 0.99)
    assert PlainKD().temperature == 4.0


def test_base_decayed_kl_softens_the_student_by_its_own_temperature():
    loss = BaseDecayedKL(teacher_temperature=4.0, student_temperature=2.0, tau0=8.0, gamma=0.9)
    tau = 8.0 * 0.9**3
    total = 0.0
    for s_row, t_row in zip(Z_S.tolist(), Z_T.tolist()):
        p, q = _softmax(t_row, 4.0), _softmax(s_row, 2.0)
        total += sum(pi * (math.log(pi) - math.log(qi) / tau) for pi, qi in zip(p, q))
    assert loss(Z_S, Z_T, 3).item() == pytest.approx(16.0 * total / 2, rel=1e-5)


def test_the_decay_step_defaults_to_the_start():
    loss = BaseDecayedKL(tau0=8.0, gamma=0.5)
    assert loss(Z_S, Z_T).item() == loss(Z_S, Z_T, 0).item() != pytest.approx(loss(Z_S, Z_T, 1).item())


@pytest.mark.parametrize("tau0,gamma,line", [
    (0.0, 0.99, r"^tau0: 0\.0 must be > 0\.0$"), (-1.0, 0.99, r"^tau0: -1\.0 must be > 0\.0$"),
    (8.0, 0.0, r"^gamma: 0\.0 is outside \(0\.0, 1\.0\]$"), (8.0, -0.5, r"^gamma: -0\.5 is outside \(0\.0, 1\.0\]$"),
    (8.0, 1.0001, r"^gamma: 1\.0001 is outside \(0\.0, 1\.0\]$")])
def test_base_decayed_kl_refuses_a_non_positive_base_or_a_decay_outside_0_1(tau0, gamma, line):
    with pytest.raises(ValueError, match=line):
        BaseDecayedKL(tau0=tau0, gamma=gamma)


@pytest.mark.parametrize("key", ["teacher_temperature", "student_temperature"])
def test_base_decayed_kl_refuses_a_temperature_of_zero(key):
    with pytest.raises(ValueError, match=rf"^{key}: 0 must be > 0\.0$"):
        BaseDecayedKL(**{key: 0})


def test_base_decayed_kl_accepts_a_small_base_and_no_decay():
    loss = BaseDecayedKL(tau0=0.5, gamma=1.0)
    assert loss.tau(0) == loss.tau(50) == 0.5


def test_feature_distance_is_the_mean_relative_squared_error():
    s1, t1 = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5])  # the teacher's energy 0.5, below 1
    s2, t2 = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    first = ((1.0 - 0.5) ** 2 + (2.0 - 0.5) ** 2) / 0.5
    second = ((3.0 - 1.0) ** 2 + 1.0) / 2.0
    assert feature_distance([s1, s2], [t1, t2]).item() == pytest.approx((first + second) / 2, rel=1e-6)
    # a silent teacher feature: the energy is floored at 1e-12, not 0 (no division by zero)
    assert feature_distance([torch.tensor([1e-6])], [torch.zeros(1)]).item() == pytest.approx(1e-12 / 1e-12, rel=1e-4)


def test_feature_distance_passes_no_gradient_to_the_teacher():
    s, t = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    feature_distance([s], [t + 1.0]).backward()
    assert t.grad is None and s.grad is not None


def test_feature_tap_keeps_the_named_outputs_in_order_and_forgets_them():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 2)))
    tap = FeatureTap(net, ["2.0", "0"])
    x = torch.randn(5, 4)
    first = net[0](x)
    tap.outputs.clear()
    out = net(x)
    taken = tap.take()
    assert len(taken) == 2 and torch.equal(taken[0], out) and torch.equal(taken[1], first)
    assert tap.outputs == {} and tap.names == ["2.0", "0"]
    with pytest.raises(KeyError):
        tap.take()  # forgotten: nothing is kept until the next forward pass
    with pytest.raises(ValueError, match=r"no module named \['fc'\] in the network; its top-level modules are "
                                         r"\['0', '1', '2'\]"):
        FeatureTap(net, ["0", "fc"])


# -- sparse/allocation --------------------------------------------------------------------------

def test_read_table_says_what_is_wrong_with_the_file(tmp_path):
    from unipts.sparse.allocation import read_table

    missing = tmp_path / "none.yaml"
    with pytest.raises(FileNotFoundError, match=rf"^allocation\.path: no such file: {missing}$"):
        read_table(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ValueError) as info:
        read_table(broken)
    import yaml

    try:
        yaml.safe_load(broken.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
    assert str(info.value) == (f"allocation.path: {broken} is not a YAML file ({first}); valid: a mapping of layer name "
                               "to sparsity, e.g. a search's sparsity_table.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 0.5\n- 0.9\n")
    with pytest.raises(ValueError, match=rf"^allocation\.path: {listed} is not a mapping of layer name to sparsity$"):
        read_table(listed)
    words = tmp_path / "words.yaml"
    words.write_text("a: high\nb: yes\nc: 0.5\n")
    with pytest.raises(ValueError) as info:
        read_table(words)
    assert str(info.value) == (f"allocation.path: {words}: not a number: {{'a': 'high', 'b': True}}; each layer's "
                               "sparsity is a number in [0, 1)")
    nested = tmp_path / "nested.yaml"
    nested.write_text("layers: {a: 0.5, 2: 0}\n")
    assert read_table(nested) == {"a": 0.5, "2": 0.0}


def test_regrow_decodes_the_genes_it_is_given_at_the_default_delta():
    from unipts.sparse.allocation import layer_numels, regrow, regrow_decode

    net = sparsify(nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 20), nn.Linear(20, 10)))
    numels = layer_numels(net)
    genes = torch.tensor([3.0, 0.0, -3.0], dtype=torch.float64)
    assert regrow(net, 0.8) == regrow_decode(numels, 0.8, 0.05)
    assert regrow(net, 0.8, genes=genes) == regrow_decode(numels, 0.8, 0.05, genes) != regrow(net, 0.8)


# -- sparse/masked, masks ------------------------------------------------------------------------

def test_masked_layers_say_their_sparsity_and_pattern():
    net = sparsify(nn.Sequential(nn.Linear(8, 4)))
    layer = net[0]
    layer.target_sparsity.fill_(0.25)
    assert layer.extra_repr() == "in_features=8, out_features=4, bias=True, sparsity=0.2500"
    layer.nm = (2, 4)
    assert layer.extra_repr() == "in_features=8, out_features=4, bias=True, sparsity=0.2500, pattern=2:4"


def test_masks_at_target_only_when_every_layer_prunes_its_count():
    from unipts.sparse import set_masks_
    from unipts.sparse.masks import masks_at_target

    net = sparsify(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 5)))
    assert masks_at_target(nn.Linear(3, 3))  # nothing masked: nothing to reach
    set_masks_(net, {"0": 50, "1": 10})
    assert masks_at_target(net)
    net[1].mask.view(-1)[net[1].mask.view(-1).argmin()] = 1.0  # one weight fewer pruned in one layer
    assert not masks_at_target(net)
    net[1].mask.fill_(1.0)
    assert not masks_at_target(net)


# -- sparse/nm -------------------------------------------------------------------------------------

def test_log_pattern_tells_which_layers_carry_it(caplog):
    from unipts.sparse.nm import log_pattern

    net = sparsify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4)), pattern="2:4")
    from unipts.sparse.nm import nm_allocation
    from unipts.sparse import set_masks_

    set_masks_(net, nm_allocation(net))
    with caplog.at_level(logging.INFO, logger="unipts.sparse.nm"):
        log_pattern(net)
    total = 8 * 27 + 4 * 8
    assert [r.getMessage() for r in caplog.records] == [
        f"sparsity.pattern=2:4: 1 of 2 layers keep 2 of every 4 weights (sparsity 0.5); global sparsity "
        f"{16 / total:.4f}",
        "sparsity.pattern=2:4: 0 stays dense (27 inputs per output, not a multiple of 4)"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unipts.sparse.nm"):
        log_pattern(sparsify(nn.Sequential(nn.Linear(8, 4))))  # unstructured: nothing to say
    assert caplog.records == []


def test_describe_and_ineligible_layers_of_an_n_m_model():
    from unipts.sparse.nm import describe, ineligible_layers

    net = sparsify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4)), pattern="1:4")
    assert ineligible_layers(net) == {"0": 27}
    info = describe(net)
    assert info == {"pattern": "1:4", "layer_sparsity": 0.75, "global_sparsity": 24 / (8 * 27 + 32),
                    "dense_layers": {"0": "27 inputs per output, not a multiple of 4"}}
    assert ineligible_layers(sparsify(nn.Sequential(nn.Conv2d(3, 8, 3)))) == {}  # unstructured: every layer fits


# -- sparse/allocation: ERK and tables -------------------------------------------------------------

def _by_hand_erk(shapes: dict[str, tuple], target: float, power: float = 1.0) -> dict[str, float]:
    """ERK's desired zeros by hand: density ~ sum(shape) / numel, scaled to the budget, the layers it
    would make denser than 1 kept dense and the rest scaled again."""
    numel = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: (sum(s) / numel[k]) ** power for k, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rest = [k for k in shapes if k not in dense]
        eps = ((1 - target) * sum(numel.values()) - sum(numel[k] for k in dense)) / sum(raw[k] * numel[k] for k in rest)
        over = [k for k in rest if eps * raw[k] > 1]
        if not over:
            return {k: 0.0 if k in dense else (1 - eps * raw[k]) * numel[k] for k in shapes}
        dense.update(over)


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_erk_gives_each_layer_the_erdos_renyi_kernel_share(target):
    from unipts.sparse.allocation import erk

    net = sparsify(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32, 10)))
    shapes = {name: tuple(layer.weight.shape) for name, layer in masked_layers(net)}
    expected = _by_hand_erk(shapes, target)
    counts = erk(net, target)
    assert sum(counts.values()) == round(target * sum(math.prod(s) for s in shapes.values()))
    assert all(abs(counts[k] - expected[k]) <= 1 for k in shapes), (counts, expected)
    assert erk(net, target, power_scale=1.0) == counts  # the published exponent is the default
    squared = erk(net, target, power_scale=2.0)
    assert (squared != counts or target < 0.9) and all(abs(squared[k] - v) <= 1 for k, v in _by_hand_erk(shapes, target, 2.0).items())


def test_erk_keeps_a_layer_dense_rather_than_denser_than_dense():
    from unipts.sparse.allocation import erk

    # the 2x2 head's share would be a density far above 1 at 50%: it stays dense, the others pay for it
    net = sparsify(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2), nn.Linear(2, 2)))
    shapes = {name: tuple(layer.weight.shape) for name, layer in masked_layers(net)}
    expected = _by_hand_erk(shapes, 0.5)
    counts = erk(net, 0.5)
    assert counts["2"] == 0 and expected["2"] == 0.0
    assert all(abs(counts[k] - expected[k]) <= 1 for k in shapes), (counts, expected)
    assert erk(nn.Sequential(nn.ReLU()), 0.5) == {}  # no masked layer: nothing to share, no division by zero


def test_table_refuses_what_does_not_fit_the_model_or_the_range(tmp_path):
    from unipts.sparse.allocation import table

    net = sparsify(nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10)))
    path = tmp_path / "t.yaml"
    path.write_text("'0': 0.5\n")  # a layer missing, none unknown
    with pytest.raises(ValueError, match=r"does not fit the model: missing layers \['1'\], unknown \[\]"):
        table(net, 0.5, path)
    path.write_text("'0': 0.5\n'1': 0.5\nfc: 0.5\n")  # none missing, one unknown
    with pytest.raises(ValueError, match=r"missing layers \[\], unknown \['fc'\]"):
        table(net, 0.5, path)
    path.write_text("'0': 1.0\n'1': 0.0\n")
    with pytest.raises(ValueError) as info:
        table(net, 0.5, path)
    assert str(info.value) == (f"allocation.path: {path}: sparsities must lie in [0, 1) (at 1.0 a layer keeps no "
                               "weight and the network's output no longer depends on its input), got {'0': 1.0}")
    path.write_text("'0': 1.5\n'1': 0.0\n")
    with pytest.raises(ValueError, match=r"got \{'0': 1.5\}"):
        table(net, 0.75, path)
    path.write_text("'0': 0.9\n'1': 0.5\n")
    with pytest.raises(ValueError) as info:
        table(net, 0.5, path)
    assert str(info.value) == ("allocation.path: the table's global sparsity is 0.7000 but sparsity.target is 0.5; "
                               "set sparsity.target to match the table")
    assert table(net, 0.7, path) == {"0": 90, "1": 50}
    path.write_text("'0': 0.9\n'1': 0.6\n")  # 150 of 200 weights: 0.75, exactly 0.25 from 0.5
    assert table(net, 0.5, path, tolerance=0.25) == {"0": 90, "1": 60}  # a gap of exactly the tolerance is within it


# -- sparse/stats ----------------------------------------------------------------------------------

def test_global_sparsity_over_all_or_some_layers():
    from unipts.sparse.stats import LayerSparsity, global_sparsity

    stats = [LayerSparsity("a", 100, 90), LayerSparsity("b", 300, 30), LayerSparsity("c", 100, 0)]
    assert global_sparsity(stats) == pytest.approx(120 / 500)
    assert global_sparsity(stats, {"a", "b"}) == pytest.approx(120 / 400)
    assert global_sparsity(stats, {"c"}) == 0.0
    assert global_sparsity(stats, set()) == 0.0 and global_sparsity([]) == 0.0  # nothing measured: no zeros
    assert stats[1].as_dict() == {"name": "b", "numel": 300, "sparsity": 0.1}


# -- sparse/nm: torch's semi-structured format -----------------------------------------------------

def test_semi_structured_needs_2_4_and_an_ampere_gpu(monkeypatch):
    from unipts.sparse import nm

    net = sparsify(nn.Sequential(nn.Linear(8, 8)), pattern="1:4")
    assert nm.semi_structured_skip_reason(net) == ("torch's semi-structured sparse kernels need the 2:4 pattern; the "
                                                   "model is 1:4")
    nm.set_pattern_(net, "2:4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert nm.semi_structured_skip_reason(net) == ("torch's semi-structured sparse kernels need a CUDA GPU; none is "
                                                   "available")
    with pytest.raises(RuntimeError, match=r"^torch's semi-structured sparse kernels need a CUDA GPU; none is "
                                           r"available$"):
        nm.to_semi_structured_(net)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, reason in [((7, 5), "(Ampere); this one is 7.5"), ((8, 0), None), ((8, 6), None), ((9, 0), None)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda c=capability: c)
        got = nm.semi_structured_skip_reason(net)
        assert got == (None if reason is None else "torch's semi-structured sparse kernels need a GPU of compute "
                       f"capability 8.0 or later {reason}")


def test_to_semi_structured_converts_the_linears_that_fit(monkeypatch, caplog):
    """Its logic on the CPU, torch's conversion stood in for: which layers convert, which stay
    dense and why, in the dtype asked for."""
    from unipts.sparse import nm, set_masks_
    import torch.sparse

    net = sparsify(nn.Sequential(nn.Conv2d(4, 8, 1), nn.Flatten(), nn.Linear(8, 16), nn.Linear(16, 6),
                                 nn.Linear(6, 8), nn.Linear(8, 8)), pattern="2:4")
    set_masks_(net, nm.nm_allocation(net))
    calls = []

    def fake(weight):
        calls.append(tuple(weight.shape))
        if weight.shape[0] == 6:
            raise RuntimeError("shape (6, 16) is not supported\nmore detail")
        return weight * 2

    monkeypatch.setattr(nm, "semi_structured_skip_reason", lambda model: None)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", fake)
    with pytest.raises(ValueError, match=r"^dtype torch.float32 is not one of \(torch.float16, torch.bfloat16\)$"):
        nm.to_semi_structured_(net, dtype=torch.float32, device="cpu")
    before = net[2].weight.detach() * net[2].mask
    with caplog.at_level(logging.INFO, logger="unipts.sparse.nm"):
        report = nm.to_semi_structured_(net, dtype=torch.bfloat16, device="cpu")
    assert report == {"converted": ["2", "5"], "dense": {
        "0": "a convolution: torch's semi-structured kernels are for matrix multiplications only",
        "4": "6 inputs, not a multiple of 4 (kept dense by the pattern)",
        "3": "shape (6, 16) is not supported"}}
    assert calls == [(16, 8), (6, 16), (8, 8)]  # a layer torch refuses does not stop the ones after it
    assert isinstance(net[2], nn.Linear) and not net[2].weight.requires_grad and net[2].weight.dtype == torch.bfloat16
    assert torch.equal(net[2].weight, (before * 2).to(torch.bfloat16))
    assert net[0].weight.dtype == torch.bfloat16 and net[0].weight.device.type == "cpu"
    assert [r.getMessage() for r in caplog.records] == [f"semi-structured export: {n} stays dense ({why})"
                                                        for n, why in report["dense"].items()]


# -- search/genetic ----------------------------------------------------------------------------------

def _recording_score(calls: list):
    """Fitness = minus the distance to 0.7 everywhere (a smooth optimum), every population recorded."""
    def score(pop: torch.Tensor) -> torch.Tensor:
        calls.append(pop.clone())
        return -(pop - 0.7).abs().sum(1)
    return score


def test_search_draws_only_from_its_own_seeded_generator():
    from unipts.search import genetic_search

    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global stream must not matter
        calls: list = []
        result = genetic_search(_recording_score(calls), 6, seed=5, population=9, generations=4, parents=3,
                                mutation_rate=0.5)
        runs.append((calls, result))
    (a, ra), (b, rb) = runs
    assert len(a) == len(b) == 4 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(p.dtype == torch.float64 for p in a) and ra.genes.dtype == torch.float64
    assert torch.equal(ra.genes, rb.genes) and ra.history == rb.history
    other: list = []
    genetic_search(_recording_score(other), 6, seed=6, population=9, generations=4, parents=3, mutation_rate=0.5)
    assert not torch.equal(other[0], a[0]) and not torch.equal(other[1], a[1])


def test_crossover_mixes_two_parents_gene_by_gene_for_each_child():
    from unipts.search.genetic import crossover

    parents = torch.stack([torch.zeros(12, dtype=torch.float64), torch.ones(12, dtype=torch.float64)])
    gen = torch.Generator().manual_seed(0)
    empty = crossover(parents, 0, gen)
    assert empty.shape == (0, 12) and empty.dtype == torch.float64
    one = crossover(parents, 1, torch.Generator().manual_seed(0))
    assert one.shape == (1, 12) and torch.equal(one[0], torch.zeros(12, dtype=torch.float64))  # the all-equal child
    children = crossover(parents, 60, gen)
    assert children.shape == (60, 12) and set(children.unique().tolist()) <= {0.0, 1.0}
    # each child draws its own genes: many different mixes, not one pattern (and its complement) for all
    mixed = {tuple(row.tolist()) for row in children[1:] if 0 < row.sum() < 12}
    assert len(mixed) > 10


def test_mutate_scales_genes_at_the_rate_and_copies_the_rest():
    from unipts.search.genetic import mutate

    parents = torch.rand(4, 50, dtype=torch.float64) + 1.0
    gen = torch.Generator().manual_seed(0)
    assert mutate(parents, 0, 0.5, gen).shape == (0, 50)
    copies = mutate(parents, 8, 0.0, gen)
    assert all(any(torch.equal(row, p) for p in parents) for row in copies)  # rate 0: parents as they were
    changed = mutate(parents, 8, 1.0, gen)
    assert not any(torch.equal(row, p) for row in changed for p in parents)
    ones = torch.ones(1, 50, dtype=torch.float64)
    half = mutate(ones, 40, 0.3, gen)
    assert half.dtype == torch.float64 and 0.25 < float((half != 1.0).double().mean()) < 0.35  # 30% of the genes


def test_search_records_each_generation_and_keeps_the_best_ever():
    from unipts.search import genetic_search

    calls: list = []
    records: list = []
    result = genetic_search(_recording_score(calls), 4, seed=0, population=7, generations=5, parents=3,
                            on_generation=records.append)
    assert records == result.history and [r["generation"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["size"] for r in records] == [7] * 5 and [r["evaluations"] for r in records] == [7, 14, 21, 28, 35]
    for pop, record in zip(calls, records):
        scores = -(pop - 0.7).abs().sum(1)
        assert record["best"] == float(scores.max()) and record["mean"] == pytest.approx(float(scores.mean()))
    best = max(float((-(p - 0.7).abs().sum(1)).max()) for p in calls)
    assert result.fitness == best == records[-1]["best_ever"]
    assert float(-(result.genes - 0.7).abs().sum()) == best
    assert result.evaluations == 35 and torch.equal(result.final_population, calls[-1])
    assert torch.equal(result.final_fitness, -(calls[-1] - 0.7).abs().sum(1))
    # released: the last generation is scored once more, and that scoring is what the result holds
    calls.clear()
    released = genetic_search(_recording_score(calls), 4, seed=0, population=7, generations=3, parents=3,
                              released_quirks=True)
    assert len(calls) == 4 and torch.equal(released.final_population, calls[-1])
    assert torch.equal(released.final_fitness, -(calls[-1] - 0.7).abs().sum(1))


def test_search_refuses_what_it_cannot_run():
    from unipts.search import GAConfig, genetic_search

    with pytest.raises(ValueError, match=r"n_genes: 0 must be >= 1"):
        genetic_search(_recording_score([]), 0)
    with pytest.raises(ValueError, match=r"score\(\) returned 3 values for 5 candidates"):
        genetic_search(lambda pop: torch.zeros(3), 2, population=5, generations=1)
    for field, value in (("population", 1), ("generations", 0), ("parents", 0), ("mutation_rate", 1.5),
                         ("patience", 0)):
        with pytest.raises(ValueError, match=rf"^{field}: "):
            GAConfig(**{field: value})
    for field in ("population", "generations", "parents", "patience"):
        with pytest.raises(ValueError, match=rf"^{field}: "):
            GAConfig(**{field: 2.5})  # whole numbers only
    assert GAConfig(population=2, generations=1, parents=1, mutation_rate=1.0, patience=1).population == 2


def test_to_semi_structured_moves_the_model_to_the_gpu_by_default(monkeypatch):
    from unipts.sparse import nm, set_masks_
    import torch.sparse

    net = sparsify(nn.Sequential(nn.Linear(8, 8)), pattern="2:4")
    set_masks_(net, nm.nm_allocation(net))
    moved = []
    monkeypatch.setattr(nm, "semi_structured_skip_reason", lambda model: None)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda w: w)
    monkeypatch.setattr(net, "to", lambda **kwargs: moved.append(kwargs) or net)
    nm.to_semi_structured_(net)
    assert moved == [{"device": "cuda", "dtype": torch.float16}]


# -- sparse/allocation: L2-normalised magnitudes, the decode's arithmetic ----------------------------

def test_l2norm_ranks_weights_relative_to_their_layers_norm():
    from unipts.sparse.allocation import l2norm

    net = sparsify(nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 2, bias=False)))
    with torch.no_grad():  # small norms (below 1), and the small layer's weights larger in absolute terms
        net[0].weight.copy_(torch.tensor([[0.01, 0.02, 0.03, 0.04], [0.05, 0.06, 0.07, 0.08]]))
        net[1].weight.copy_(torch.tensor([[0.5, 0.1], [0.2, 0.3]]))
    # relative to its norm 0.1428, layer 0's 0.01..0.03 score 0.07..0.21; layer 1's 0.1 scores 0.16 (norm 0.62)
    assert l2norm(net, 0.25) == {"0": 2, "1": 1}
    assert l2norm(net, 0.5) == {"0": 4, "1": 2}


def _by_hand_regrow(numels: dict, target: float, delta: float, genes: list[float]) -> dict:
    """The decode in Python floats (float64), for a case where no layer regrows all it pruned."""
    from unipts.sparse.allocation import round_to_total, total_zeros

    e = [math.exp(g) for g in genes]
    share = [v / sum(e) for v in e]
    budget = delta * sum(numels.values())
    desired = {k: (target + delta) * n - budget * s for (k, n), s in zip(numels.items(), share)}
    return round_to_total(desired, numels, total_zeros(numels, target))


def test_regrow_decode_computes_in_double_precision():
    """Layers of 10^8 weights: single precision would be off by several weights per layer."""
    from unipts.sparse.allocation import regrow_decode

    numels = {"a": 100_000_003, "b": 70_000_001, "c": 30_000_007}
    genes = [0.523456789, 0.123456789, -0.987654321]  # a Python list: read as double precision
    assert regrow_decode(numels, 0.5, 0.4, genes) == _by_hand_regrow(numels, 0.5, 0.4, genes)
    assert regrow_decode(numels, 0.5, 0.4) == _by_hand_regrow(numels, 0.5, 0.4, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"^expected 3 genes, got shape \(2,\)$"):
        regrow_decode(numels, 0.5, 0.05, [0.1, 0.2])


# -- search/genetic: the draws themselves ----------------------------------------------------------

def test_crossover_and_mutate_draw_exactly_as_documented():
    """Re-drawn here from the same seed, in the documented order: parents, genes taken, factors."""
    from unipts.search.genetic import crossover, mutate

    parents = torch.rand(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 1.0
    ref = torch.Generator().manual_seed(9)
    a, b = torch.randint(5, (6,), generator=ref), torch.randint(5, (6,), generator=ref)
    take_a = torch.rand(6, 7, generator=ref) < 0.5
    expected = torch.where(take_a, parents[a], parents[b])
    expected[0] = 0.0
    assert torch.equal(crossover(parents, 6, torch.Generator().manual_seed(9)), expected)
    ref = torch.Generator().manual_seed(9)
    src = parents[torch.randint(5, (6,), generator=ref)]
    hit = torch.rand(src.shape, generator=ref) < 0.4
    factor = 1.0 + torch.randn(src.shape, generator=ref, dtype=torch.float64)
    got = mutate(parents, 6, 0.4, torch.Generator().manual_seed(9))
    assert got.dtype == torch.float64 and torch.equal(got, torch.where(hit, src * factor, src))
    assert mutate(parents, 1, 0.4, torch.Generator().manual_seed(9)).shape == (1, 7)


def test_generation_zero_is_the_all_equal_vector_and_seeded_doubles():
    from unipts.search import genetic_search

    calls: list = []
    genetic_search(_recording_score(calls), 3, seed=4, population=6, generations=1)
    expected = torch.rand(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(calls[0], torch.cat([torch.zeros(1, 3, dtype=torch.float64), expected]))
    assert genetic_search(_recording_score([]), 1, population=3, generations=2).genes.shape == (1,)  # one gene is enough


def test_integer_scores_are_read_as_fitness():
    from unipts.search import genetic_search

    result = genetic_search(lambda pop: [int(i) for i in range(len(pop))], 2, population=4, generations=2)
    assert result.history[0]["mean"] == 1.5 and result.fitness == 3.0


def test_patience_counts_generations_without_a_better_best():
    from unipts.search import genetic_search

    flat = genetic_search(lambda pop: torch.zeros(len(pop)), 3, population=4, generations=20, parents=2, patience=3)
    assert len(flat.history) == 4  # the first generation sets the best, then 3 without improvement
    calls = iter(range(100))
    rising = genetic_search(lambda pop: torch.full((len(pop),), float(next(calls))), 3, population=4,
                            generations=6, parents=2, patience=1)
    assert len(rising.history) == 6  # every generation is better: never stale
    bumps = iter([0, 0, 5, 5, 5, 5, 5, 5])  # better in generation 2, then flat
    late = genetic_search(lambda pop: torch.full((len(pop),), float(next(bumps))), 3, population=4,
                          generations=8, parents=2, patience=2)
    assert len(late.history) == 5


def test_a_tie_does_not_replace_the_best_found_first():
    from unipts.search import genetic_search

    calls: list = []

    def flat(pop):  # everything ties, but the all-equal vector scores lower
        calls.append(pop.clone())
        return torch.where(pop.abs().sum(1) == 0, -1.0, 0.0).double()

    result = genetic_search(flat, 4, seed=0, population=6, generations=4, parents=2)
    assert torch.equal(result.genes, calls[0][1]) and result.fitness == 0.0


def test_the_elite_of_an_earlier_generation_is_the_next_parent():
    """One parent per generation: generation 0's outlier. Its exact copies score lowest afterwards,
    yet it stays the parent, so every crossover child of generation 2 is a copy of it again."""
    from unipts.search import genetic_search

    calls: list = []
    elite: list = []

    def score(pop):
        calls.append(pop.clone())
        s = torch.rand(len(pop), generator=torch.Generator().manual_seed(len(calls)), dtype=torch.float64) / 2
        if len(calls) == 1:
            s[3] = 0.7  # 0.699999988 in single precision: the elite's record must stay double
            elite.append(pop[3].clone())
        else:
            s[:] = 0.6999999999  # just below the elite
            s[(pop == elite[0]).all(1)] = -1.0
        return s

    genetic_search(score, 5, seed=0, population=9, generations=3, parents=1)
    n_cross = 4
    for generation in (1, 2):
        children = calls[generation][1:n_cross]
        assert all(torch.equal(child, elite[0]) for child in children), generation


def test_a_new_elite_is_not_its_own_second_parent():
    """Two parents, and generation 0's best is new: the parents are its two best candidates, so the
    crossover children mix two different vectors (not the best twice)."""
    from unipts.search import genetic_search

    calls: list = []

    def score(pop):
        calls.append(pop.clone())
        return torch.arange(len(pop), dtype=torch.float64)  # the last candidate best, then the one before

    genetic_search(score, 6, seed=0, population=9, generations=2, parents=2)
    first, second = calls[0][8], calls[0][7]
    children = calls[1][1:4]
    for child in children:
        assert all(bool(g == a) or bool(g == b) for g, a, b in zip(child, first, second))
    assert any(not torch.equal(child, first) for child in children)


# -- sparse/allocation: rounding, regrowth past a layer's capacity, ties, LAMP ---------------------

def test_round_to_total_takes_units_back_from_the_smallest_fractions():
    from unipts.sparse.allocation import round_to_total

    # floors 5 + 5 + 5 = 15 > 13: the two smallest fractional parts (a's .2, c's .5) give one back each
    assert round_to_total({"a": 5.2, "b": 5.7, "c": 5.5}, {"a": 10, "b": 10, "c": 10}, 13) == {"a": 4, "b": 5, "c": 4}
    # a layer may go down to zero
    assert round_to_total({"a": 1.2, "b": 3.9}, {"a": 10, "b": 10}, 3) == {"a": 0, "b": 3}
    with pytest.raises(ValueError, match=r"^cannot prune 21 of 20 weights$"):
        round_to_total({"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}, 21)


def test_regrowth_past_a_layers_capacity_goes_to_the_others():
    from unipts.sparse.allocation import regrow_decode

    # b (10 weights) would get nearly all 50.5 regrown weights but pruned only 5.5: it ends dense, a takes
    # the other 45
    assert regrow_decode({"a": 1000, "b": 10}, 0.5, 0.05, [0.0, 10.0]) == {"a": 505, "b": 0}
    # two rounds: c fills first, then b, then a takes the rest
    got = regrow_decode({"a": 10_000, "b": 100, "c": 10}, 0.5, 0.1, [0.0, 6.0, 12.0])
    assert got == {"a": 5055, "b": 0, "c": 0}


def test_global_magnitude_prunes_tied_weights_in_layer_order():
    from unipts.sparse.allocation import by_global_score

    scores = {"a": torch.ones(6), "b": torch.ones(6), "c": torch.full((4,), 2.0)}
    assert by_global_score(scores, 0.5) == {"a": 6, "b": 2, "c": 0}


def test_lamp_scores_are_each_square_over_the_larger_ones():
    from unipts.sparse.allocation import lamp_scores

    w = torch.tensor([0.1, -0.3, 0.2, 0.1])  # small weights: the sums stay below 1
    sq = [0.01, 0.09, 0.04, 0.01]
    expected = [0.01 / (0.01 + 0.01 + 0.04 + 0.09), 0.09 / 0.09, 0.04 / (0.04 + 0.09), 0.01 / (0.01 + 0.04 + 0.09)]
    got = lamp_scores(w)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert sq[0] == sq[3] and got[0] < got[3]  # ties: the first in order counts the other as larger


def test_targets_outside_0_1_are_refused_and_n_m_needs_no_rule(caplog):
    from unipts.sparse import allocate

    net = sparsify(nn.Sequential(nn.Linear(8, 4)))
    for target in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"^target sparsity {target} is outside \[0, 1\)$"):
            allocate(net, "uniform", target)
    nm_net = sparsify(nn.Sequential(nn.Linear(8, 4)), pattern="2:4")
    with caplog.at_level(logging.INFO, logger="unipts.sparse.allocation"):
        counts = allocate(nm_net, "erk", 0.5)
    assert counts == {"0": 16}
    assert [r.getMessage() for r in caplog.records] == [
        "allocation: sparsity.pattern=2:4 fixes every layer's sparsity, so the allocation rule has no choice to make"]


# -- sparse/masked, masks, nm, pattern: the rest -----------------------------------------------------

def test_sparsify_refuses_a_model_with_nothing_left_to_prune():
    with pytest.raises(ValueError, match=r"^model.exclude: \[.0.\] leaves no Conv2d or Linear layer to prune; its prunable layers: 0$"):
        sparsify(nn.Sequential(nn.Linear(4, 4)), exclude=["0"])


def test_an_exclusion_that_names_no_layer_is_refused_naming_the_layers():
    from unipts import UniptsError

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"^model.exclude: 'fcc', '1' match no Conv2d or Linear layer \(whole names, "
                       r"with \* and \?, e.g. 'layer1.\*'\); its prunable layers: 0, 2$") as err:
        sparsify(net, exclude=["2", "fcc", "1"])  # "1" is the ReLU: not a prunable layer
    assert isinstance(err.value, UniptsError)  # the entry points' one line
    assert not list(masked_layers(net))  # refused before any layer changed
    assert [name for name, _ in masked_layers(sparsify(net, exclude=["[2]"]))] == ["0"]


def test_an_n_m_pattern_no_layer_can_carry_is_refused_naming_what_fits():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 2))  # rows of 9 and 16 inputs
    with pytest.raises(ValueError, match=r"^sparsity.pattern: 1:7: no layer of the network can carry it \(a layer "
                       r"needs a multiple of 7 inputs per output; here: 0 9, 2 16\); valid: an M \(up to 16\) among "
                       r"\[2, 3, 4, 8, 9, 16\], e.g. 2:4$"):
        sparsify(net, pattern="1:7")
    assert not list(masked_layers(net))
    assert [layer.nm for _, layer in masked_layers(sparsify(net, pattern="1:3"))] == [(1, 3), (1, 3)]  # one carries it


def test_a_masked_convolution_keeps_its_bias():
    conv = nn.Conv2d(2, 3, 3, bias=True)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
    net = sparsify(nn.Sequential(conv))
    net[0].mask.view(-1)[::2] = 0.0
    x = torch.randn(1, 2, 5, 5)
    expected = torch.nn.functional.conv2d(x, net[0].weight * net[0].mask, net[0].bias)
    assert torch.allclose(net(x), expected)


def test_magnitude_mask_has_the_weights_dtype_and_checks_the_count():
    from unipts.sparse import magnitude_mask

    w = torch.tensor([[0.5, -0.1, 0.3, 0.0]], dtype=torch.float64)
    for zeros, kept in ((1, [1, 1, 1, 0]), (3, [1, 0, 0, 0])):  # both branches: few zeros, many zeros
        mask = magnitude_mask(w, zeros)
        assert mask.dtype == torch.float64 and mask.tolist() == [kept]
    with pytest.raises(ValueError, match=r"^cannot prune 5 of 4 weights$"):
        magnitude_mask(w, 5)


def test_model_pattern_is_the_one_pattern_of_the_masked_layers():
    from unipts.sparse import model_pattern

    net = sparsify(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), pattern="2:4")
    assert model_pattern(net) == (2, 4) and model_pattern(nn.Sequential(nn.ReLU())) is None
    net[1].nm = (1, 4)
    with pytest.raises(ValueError) as info:
        model_pattern(net)
    assert str(info.value) == ("the masked layers carry different patterns ['1:4', '2:4']; give them one with "
                               "set_pattern_()")


def test_pattern_helpers_by_hand():
    from unipts.sparse.pattern import check_target, fixed_zeros, format_pattern, is_eligible, parse_pattern, row_length

    assert format_pattern(None) == "unstructured" and format_pattern((2, 4)) == "2:4"
    assert row_length(torch.zeros(5)) == 5 and row_length(torch.zeros(3, 2, 3, 3)) == 18
    assert is_eligible(torch.zeros(1, 1), 1) and not is_eligible(torch.zeros(0, 4), 4)
    zeros = fixed_zeros(torch.zeros(3, 8), (2, 4))
    assert zeros == 12 and isinstance(zeros, int)
    with pytest.raises(ValueError) as info:
        check_target(0.9, (2, 4))
    assert str(info.value) == ("sparsity.target: 0.9 does not match sparsity.pattern=2:4, which fixes every layer's "
                               "sparsity at 1 - 2/4 = 0.5; valid: sparsity.target=0.5")
    with pytest.raises(ValueError):
        parse_pattern((2.5, 4))
    with pytest.raises(ValueError) as info:
        parse_pattern(124)
    assert 'an unquoted N:M in a YAML file is read as a base-60 number: write pattern: "2:4"' in str(info.value)


def test_regrowth_left_after_a_full_layer_is_shared_by_the_others_shares():
    from unipts.sparse.allocation import regrow_decode

    # c (10 weights) fills at 6; the other 1995 regrown weights go to a and b as 1 : e (their genes 0 and 1)
    got = regrow_decode({"a": 10_000, "b": 10_000, "c": 10}, 0.5, 0.1, [0.0, 1.0, 12.0])
    a = 0.6 * 10_000 - 1995 / (1 + math.e)
    assert abs(got["a"] - a) <= 1 and got["c"] == 0 and sum(got.values()) == 10_005


def test_mutation_rate_is_a_probability():
    from unipts.search import GAConfig

    for rate in (-0.1, 1.1):
        with pytest.raises(ValueError, match=r"^mutation_rate: "):
            GAConfig(mutation_rate=rate)
