"""ImageNet-scale habits of the search: calibration images kept at one byte per value, and the
forward passes under autocast, without changing which candidates win."""

from __future__ import annotations

import copy

import pytest
import torch

from unipts.models import DigitsNet
from unipts.search import CompactImages, Fitness, split_calibration
from unipts.search.images import keep_images
from unipts.sparse import sparsify

from .conftest import FAST, read_summary, run_cli


def _ranks(x: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_compact_images_come_back_within_half_a_step_at_a_quarter_of_the_bytes():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (20, 3, 16, 16), generator=g).float()
    mean, std = torch.tensor([125.0, 122.0, 113.0]), torch.tensor([63.0, 62.0, 66.0])
    images = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # what a data pipeline hands over
    kept = CompactImages.from_tensor(images, chunk=7)
    back = torch.cat(list(kept.batches(6)))
    step = kept.step.view(20, 3, 1, 1)
    assert back.shape == images.shape and bool(((back - images).abs() <= step / 2 + 1e-6).all())
    # 8-bit pixels normalised per channel: within half an original pixel level of themselves
    assert float(((back - images) * std.view(1, 3, 1, 1)).abs().max()) <= 0.5 + 1e-4
    assert kept.nbytes < images.numel() * images.element_size() / 3
    assert len(kept[5:9]) == 4 and torch.equal(kept[5:9].decode(), kept.decode()[5:9])


def test_keep_images_takes_the_first_n_with_their_labels():
    data = torch.utils.data.TensorDataset(torch.randn(30, 1, 8, 8), torch.arange(30))
    kept, labels = keep_images(data, 12, batch_size=5)
    assert len(kept) == 12 and labels.tolist() == list(range(12))
    with pytest.raises(ValueError, match="cannot take"):
        keep_images(data, 31)


@pytest.fixture(scope="module")
def digits_search():
    """A trained digits network, sparsified, with 256 calibration images and 25 random candidates."""
    from unipts.data import digits

    splits = digits()
    torch.manual_seed(0)
    net = DigitsNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(splits.train_plain, batch_size=64, shuffle=True)
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    images, labels = keep_images(splits.train_plain, 256)
    genes = torch.rand(25, len(list(sparsify(DigitsNet()).modules())), generator=torch.Generator().manual_seed(3))
    return sparsify(net), images, labels, genes


def _scores(net, images, labels, genes, **kwargs) -> torch.Tensor:
    bn_x, fit_x, fit_y = split_calibration(images, labels)
    # a copy each time: scoring leaves the last candidate's BN statistics in the network
    fitness = Fitness(copy.deepcopy(net), 0.9, bn_x, fit_x, fit_y, metric="kl", **kwargs)
    return fitness(genes[:, :len(fitness.names)])


def test_compact_images_score_candidates_as_float_images_do(digits_search):
    net, images, labels, genes = digits_search
    compact = _scores(net, images, labels, genes)
    plain = _scores(net, images.decode(), labels, genes)
    assert torch.allclose(compact, plain)  # decoded the same way, batch by batch


@pytest.mark.slow
def test_bf16_autocast_ranks_candidates_as_fp32_does(digits_search):
    net, images, labels, genes = digits_search
    fp32 = _scores(net, images, labels, genes)
    bf16 = _scores(net, images, labels, genes, autocast=torch.bfloat16)
    assert not torch.equal(fp32, bf16)  # it did run in another precision
    assert spearman(fp32, bf16) >= 0.9


@pytest.mark.slow
def test_prune_runs_in_bf16_and_times_each_phase_apart(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, "trainer.precision=bf16-mixed", "allocation.population=4",
            "allocation.generations=2", "allocation.parents=2", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert summary["top1"] > 0.8  # 0.877 measured (0.886 in float32)
    wall = summary["wall_s"]
    assert wall["search"] > 0 and wall["finetune"] > 0 and wall["validation"] > 0  # FAST validates every epoch
    assert wall["dense"] + wall["search"] + wall["finetune"] + wall["validation"] <= wall["total"]
    # the process's peak memory in MiB (torch alone takes some hundreds; KiB or bytes would be far off)
    assert 100 < summary["peak_memory_mib"]["cpu"] < 8192 and "gpu" not in summary["peak_memory_mib"]
