"""The reducing-regrowing search: decode, genetic algorithm, fitness, callback, DDP."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import yaml
from torch import nn

from unipts.models import DigitsNet
from unipts.models.cifar_resnet import CifarResNet
from unipts.search import (Fitness, child_counts, genetic_search, images_per_evaluation, search_allocation,
                           split_calibration)
from unipts.sparse import masked_layers, sparsify, zero_counts
from unipts.sparse.allocation import layer_numels, regrow_decode, table, total_zeros


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return sparsify(DigitsNet(width=4))


def tiny_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


SMALL = dict(population=6, generations=3, parents=3, batch_size=32)


# -- decode -----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.98])
def test_decode_hits_exact_target_for_random_genes(target):
    numels = layer_numels(sparsify(CifarResNet(20)))
    g = torch.Generator().manual_seed(int(target * 100))
    want = total_zeros(numels, target)
    for scale in (1.0, 5.0, 30.0):  # large scales concentrate the regrowth: the clip at 0 binds
        for _ in range(5):
            genes = scale * torch.rand(len(numels), generator=g, dtype=torch.float64)
            counts = regrow_decode(numels, target, 0.05, genes)
            assert sum(counts.values()) == want
            assert all(0 <= counts[k] <= numels[k] for k in numels)
    # the released decode loses the clipped budget: it overshoots once a layer hits zero sparsity
    spiky = torch.zeros(len(numels), dtype=torch.float64)
    spiky[0] = 30.0  # all the regrowth offered to the 432-weight first conv
    assert sum(regrow_decode(numels, target, 0.05, spiky, clip_overshoot=True).values()) > want
    assert sum(regrow_decode(numels, target, 0.05, spiky).values()) == want


def test_fitness_masks_follow_the_decode():
    net = tiny_net()
    x, y = tiny_data()
    bn_x, fit_x, fit_y = split_calibration(x, y)
    fit = Fitness(net, 0.9, bn_x, fit_x, fit_y, batch_size=16)
    genes = torch.rand(len(fit.names), dtype=torch.float64)
    counts = fit.decode(genes)
    fit.apply_(counts)
    for name, layer in masked_layers(net):
        assert layer.n_zeros == counts[name]
        kept = layer.weight.abs()[layer.mask.bool()]
        pruned = layer.weight.abs()[~layer.mask.bool()]
        if kept.numel() and pruned.numel():
            assert pruned.max() <= kept.min()


def test_split_calibration_is_disjoint_unless_released():
    x, y = tiny_data(10)
    bn_x, fit_x, fit_y = split_calibration(x, y, 4, 6)
    assert torch.equal(bn_x, x[:4]) and torch.equal(fit_x, x[4:]) and torch.equal(fit_y, y[4:])
    bn_x, fit_x, fit_y = split_calibration(x, y, fitness_on_bn_images=True)
    assert torch.equal(bn_x, fit_x) and len(fit_y) == 10
    with pytest.raises(ValueError, match="fitness_images"):
        split_calibration(x, y, 6, 6)


def test_max_images_keeps_the_first_images_and_halves_them():
    x, y = tiny_data(10)
    bn_x, fit_x, fit_y = split_calibration(x, y, max_images=6)
    assert torch.equal(bn_x, x[:3]) and torch.equal(fit_x, x[3:6]) and torch.equal(fit_y, y[3:6])
    with pytest.raises(ValueError, match="fitness_images"):
        split_calibration(x, y, 4, 4, max_images=6)
    with pytest.raises(ValueError, match="max_images"):
        split_calibration(x, y, max_images=0)


def test_images_per_evaluation_counts_both_passes():
    # the released sizes pass all 1,024 calibration images twice (BN, then scoring on the same
    # images); the default keeps 512 of them, half for each pass: 4x fewer
    assert images_per_evaluation(1024, fitness_on_bn_images=True) == 2048
    assert images_per_evaluation(1024, max_images=512) == 512
    assert images_per_evaluation(1024, 128, 128, max_images=256) == 256
    assert images_per_evaluation(300, 100) == 300  # the fitness images take the rest


# -- genetic algorithm ------------------------------------------------------------------------
def noise_score(seed: int = 0, calls: list | None = None):
    """Fitness = pure noise, recorded per call; one forced outlier at call 0, row 3."""
    g = torch.Generator().manual_seed(seed)

    def score(pop: torch.Tensor) -> torch.Tensor:
        s = torch.rand(len(pop), generator=g, dtype=torch.float64)
        if calls is not None:
            if not calls:
                s[3] = 100.0
            calls.append((pop.clone(), s.clone()))
        return s

    return score


def test_child_counts_scale_with_population():
    assert child_counts(25) == (12, 12, 1)
    assert child_counts(10) == (4, 4, 2)
    assert child_counts(50) == (24, 24, 2)


def test_elitism_never_loses_the_best_candidate():
    calls: list = []
    result = genetic_search(noise_score(1, calls), 8)
    best_ever = [h["best_ever"] for h in result.history]
    assert all(b <= a for b, a in zip(best_ever, best_ever[1:]))
    assert [h["size"] for h in result.history] == [25] * 25  # refilled with newcomers
    assert result.evaluations == 625
    # the outlier of generation 0 is the answer, though never scored again
    assert result.fitness == 100.0
    assert torch.equal(result.genes, calls[0][0][3])
    gen0 = calls[0][0]
    assert torch.equal(gen0[0], torch.zeros(8, dtype=torch.float64))  # the all-equal vector
    assert ((gen0[1:] >= 0) & (gen0[1:] < 1)).all()


def test_released_quirks_reproduce_the_released_search():
    calls: list = []
    result = genetic_search(noise_score(1, calls), 8, released_quirks=True)
    # population 24 after the first generation (the newcomers are discarded)
    assert [h["size"] for h in result.history] == [25] + [24] * 24
    assert len(calls) == 26 and result.evaluations == 25 + 24 * 24 + 24 == 625
    # the final call re-evaluates the last generation; its argmax is the pick
    last_pop, last_scores = calls[-1]
    assert torch.equal(last_pop, calls[-2][0])
    i = int(torch.argmax(last_scores))
    assert torch.equal(result.genes, last_pop[i]) and result.fitness == float(last_scores[i])
    # no elitism and no best-ever record: generation 0's outlier is lost
    assert result.fitness < 100.0
    # crossover's first child is always the all-equal vector
    for pop, _ in calls[1:-1]:
        assert torch.equal(pop[0], torch.zeros(8, dtype=torch.float64))


def test_same_seed_same_search_different_seed_different_draws():
    a = genetic_search(noise_score(0), 5, seed=3, population=8, generations=4)
    b = genetic_search(noise_score(0), 5, seed=3, population=8, generations=4)
    c = genetic_search(noise_score(0), 5, seed=4, population=8, generations=4)
    assert torch.equal(a.genes, b.genes) and a.history == b.history
    assert not torch.equal(a.final_population, c.final_population)


# -- fitness on a network ---------------------------------------------------------------------
def test_fitness_never_deepcopies_and_leaves_weights_unchanged(monkeypatch):
    net = tiny_net()
    x, y = tiny_data()
    before = {k: v.clone() for k, v in net.named_parameters()}
    bn_before = net.features[1].running_mean.clone()

    def no_copy(*args, **kwargs):
        raise AssertionError("the search must not deepcopy")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    monkeypatch.setattr(nn.Module, "__deepcopy__", no_copy, raising=False)
    net.train()
    result = search_allocation(net, 0.9, x, y, **SMALL)
    for k, v in net.named_parameters():
        assert torch.equal(v, before[k]), k
    assert net.training  # the mode is restored
    assert zero_counts(net) == result.counts  # the winner is applied (target_sparsity too)
    assert all(layer.n_zeros == result.counts[n] for n, layer in masked_layers(net))
    assert sum(result.counts.values()) == total_zeros(layer_numels(net), 0.9)
    assert not torch.equal(net.features[1].running_mean, bn_before)  # BN re-estimated for the winner
    assert result.evaluations == 6 * 3
    # each evaluation: a BN pass over the first half of the images and a scoring pass over the rest
    assert result.forward_images == 6 * 3 * len(x) == result.evaluations * images_per_evaluation(len(x))


def test_fitness_is_top1_on_the_fitness_images():
    net = tiny_net()
    x, y = tiny_data()
    bn_x, fit_x, fit_y = split_calibration(x, y)
    fit = Fitness(net, 0.5, bn_x, fit_x, fit_y, noise_std=0.0, batch_size=8)
    value = fit.evaluate(torch.zeros(len(fit.names)))
    net.eval()
    with torch.no_grad():
        expected = (net(fit_x).argmax(1) == fit_y).float().mean().item()
    assert value == pytest.approx(expected)
    # deterministic with shared noise: the same genes score the same
    fit2 = Fitness(net, 0.5, bn_x, fit_x, fit_y, noise_std=0.1)
    g = torch.rand(len(fit.names), dtype=torch.float64)
    assert fit2.evaluate(g) == fit2.evaluate(g)


def test_same_seed_same_table_and_search_can_restore():
    x, y = tiny_data()
    a = search_allocation(tiny_net(), 0.9, x, y, seed=5, **SMALL)
    b = search_allocation(tiny_net(), 0.9, x, y, seed=5, **SMALL)
    assert a.table == b.table and a.history == b.history and a.genes == b.genes
    net = tiny_net()
    masks = {n: layer.mask.clone() for n, layer in masked_layers(net)}
    bn = net.features[1].running_var.clone()
    search_allocation(net, 0.9, x, y, seed=5, apply=False, **SMALL)
    assert all(torch.equal(layer.mask, masks[n]) for n, layer in masked_layers(net))
    assert torch.equal(net.features[1].running_var, bn)


# -- the Lightning callback -------------------------------------------------------------------
def test_callback_searches_once_writes_table_and_resumes(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    from unipts.lightning import Classifier
    from unipts.lightning.search_callback import SparsitySearch

    x, y = tiny_data()
    net = tiny_net()
    cb = SparsitySearch(0.9, tmp_path, (x, y), progress=False, **SMALL)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, accelerator="cpu", devices=1,
                         logger=CSVLogger(tmp_path), callbacks=[cb], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Classifier(net, 10), DataLoader(TensorDataset(x, y), batch_size=16))
    assert cb.done and cb.search_seconds > 0 and len(cb.history) == 3
    # the table file reproduces the exact counts through allocation=table
    doc = yaml.safe_load((tmp_path / "sparsity_table.yaml").read_text())
    assert doc["layers"] == cb.table
    assert table(net, 0.9, tmp_path / "sparsity_table.yaml") == cb.counts
    assert (tmp_path / "search_layer_sparsity.png").stat().st_size > 0
    assert (tmp_path / "search_fitness.png").stat().st_size > 0
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text()
    assert "search/best_fitness" in metrics and "search/mean_fitness" in metrics
    # resume: the state says done, so no second search (the calibration would raise if used)
    state = cb.state_dict()
    cb2 = SparsitySearch(0.9, tmp_path, calibration="not data", progress=False)
    cb2.load_state_dict(state)
    cb2.on_fit_start(trainer, Classifier(tiny_net(), 10))
    assert cb2.table == cb.table and cb2.history == cb.history


def test_search_config_matches_callback_options():
    from pathlib import Path

    import unipts
    from unipts.lightning.search_callback import OPTION_KEYS, SparsitySearch

    node = yaml.safe_load((Path(unipts.__file__).parent / "conf" / "allocation" / "search.yaml").read_text())
    assert node["rule"] == "search"
    node["seed"] = 0  # ${seed} in the config
    cb = SparsitySearch.from_config(node, 0.9)
    assert set(node) - {"rule"} == set(OPTION_KEYS)
    assert cb.options["population"] == 25 and cb.options["generations"] == 25 and not cb.options["released_quirks"]


# -- two processes ----------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from unipts.lightning.search_callback import SparsitySearch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = tiny_net()
        cb = SparsitySearch(0.9, os.path.join(out_dir, "run"), tiny_data(), progress=False, plots=False,
                            seed=7, **SMALL)
        result = cb.search(net, tiny_data())
        masks = {n: layer.mask.clone() for n, layer in masked_layers(net)}
        torch.save({"table": cb.table, "masks": masks, "history": cb.history, "evaluations": result.evaluations},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_gives_identical_tables_and_masks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["table"] == r1["table"] and r0["history"] == r1["history"]
    assert r0["masks"].keys() == r1["masks"].keys()
    assert all(torch.equal(r0["masks"][k], r1["masks"][k]) for k in r0["masks"])
    assert (tmp_path / "run" / "sparsity_table.yaml").exists()  # written by rank 0
    # the shares add up to the whole population
    assert r0["evaluations"] == r1["evaluations"] == 6 * 3
    assert [h["size"] for h in r0["history"]] == [6, 6, 6]
