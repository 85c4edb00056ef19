from types import SimpleNamespace

import pytest
import torch
from torch import nn

from unipts.data import BatchAugment, calibration_indices, digits
from unipts.sparse import reestimate_bn_


def test_calibration_indices_are_distinct_seeded_and_reproducible():
    labels = torch.arange(1000) % 10
    a = calibration_indices(labels, 300, seed=3)
    assert len(a) == len(set(a)) == 300 and all(0 <= i < 1000 for i in a)
    assert a == calibration_indices(labels, 300, seed=3)
    assert a != calibration_indices(labels, 300, seed=4)


def test_balanced_calibration_draws_equal_classes():
    labels = torch.cat([torch.zeros(50), torch.ones(500), torch.full((500,), 2)]).long()
    idx = calibration_indices(labels, 150, seed=0, balanced=True)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [50, 50, 50] and len(set(idx)) == 150
    idx = calibration_indices(labels, 400, seed=0, balanced=True)  # class 0 runs out: the rest share
    assert torch.bincount(labels[idx]).tolist() == [50, 175, 175]


@pytest.mark.parametrize("size", [0, 1001])
def test_calibration_size_out_of_range(size):
    with pytest.raises(ValueError, match="calib.size"):
        calibration_indices(torch.zeros(1000), size, seed=0)


def test_digits_split_is_deterministic_and_disjoint():
    a, b = digits(), digits()
    assert len(a.train) + len(a.eval) == 1797
    assert torch.equal(a.train_labels, b.train_labels)
    x, y = a.train[0]
    assert x.shape == (1, 8, 8) and 0 <= int(y) < 10


def test_batch_augment_translates_and_flips_within_bounds():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = BatchAugment(pad=1, flip=True)(x)
    assert out.shape == x.shape
    assert BatchAugment()(x) is x


def test_bn_reestimation_gives_the_cumulative_statistics():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).eval()
    model[1].running_mean.fill_(5.0)
    batches = [torch.randn(4, 2, 3, 3) for _ in range(3)]
    reestimate_bn_(model, batches)
    assert not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    batch_means = torch.stack([f.mean((0, 2, 3)) for f in feats])
    batch_vars = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats])
    assert torch.allclose(model[1].running_mean, batch_means.mean(0), atol=1e-5)
    assert torch.allclose(model[1].running_var, batch_vars.mean(0), atol=1e-5)


# -- data.num_workers ----------------------------------------------------------------------------

@pytest.mark.parametrize("cpus,processes,workers", [
    (1, 1, 0),    # one CPU: the main process loads
    (2, 1, 1),
    (16, 1, 8),   # capped
    (64, 1, 8),
    (16, 4, 3),   # four DDP processes share the node's CPUs
    (4, 8, 0),    # fewer CPUs than processes
])
def test_auto_workers_leave_one_cpu_per_process_and_are_capped(cpus, processes, workers):
    from unipts.data.workers import auto_workers

    assert auto_workers(cpus, processes) == workers


def test_num_workers_auto_follows_the_cpus_the_process_may_use(monkeypatch):
    from unipts.data import workers

    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert workers.available_cpus() == 3
    assert workers.loader_workers("auto") == 2
    assert workers.loader_workers(5) == 5 and workers.loader_workers(0) == 0  # integers as given
    for bad in ("many", -1, 1.5, True):
        with pytest.raises(ValueError, match="data.num_workers"):
            workers.loader_workers(bad)


def test_datamodule_loaders_start_the_resolved_workers_and_pin_only_for_a_gpu(monkeypatch):
    from unipts.data import workers
    from unipts.lightning import CalibrationDataModule

    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    splits = digits(augment=False)
    auto = CalibrationDataModule(splits, list(range(8)), batch_size=4, num_workers="auto")
    loader = auto.train_dataloader()
    assert loader.num_workers == 3 and loader.persistent_workers and not loader.pin_memory
    plain = CalibrationDataModule(splits, list(range(8)), batch_size=4, num_workers=0).val_dataloader()
    assert plain.num_workers == 0 and not plain.persistent_workers

    class TwoGpus:  # what the datamodule reads of a Trainer running two processes on GPUs
        num_devices = 2
        strategy = SimpleNamespace(root_device=torch.device("cuda", 0))

    auto.trainer = TwoGpus()
    loader = auto.val_dataloader()  # made, not iterated: no GPU needed
    assert loader.num_workers == 1 and loader.pin_memory


@pytest.mark.parametrize("value", ["many", "-1", "1.5", "true"])
def test_num_workers_is_checked_at_start(value):
    from unipts import UniptsError
    from unipts.spec import build_prune_spec

    from .test_config import _compose

    with pytest.raises(UniptsError) as err:
        build_prune_spec(_compose(["data=imagefolder", "data.root=/", f"data.num_workers={value}"]))
    assert str(err.value).startswith("data.num_workers:") and "auto" in str(err.value)


def test_image_folder_presets_default_to_auto_workers_and_in_memory_sets_to_none():
    from .test_config import _compose

    for name in ("imagefolder", "imagenet"):
        assert _compose([f"data={name}"]).data.num_workers == "auto"
    for name in ("digits", "cifar10"):
        assert _compose([f"data={name}"]).data.num_workers == 0


def _jpeg_archive(tmp_path):
    """A CIFAR-10-shaped archive (train/ and test/ class folders of 32 px JPEGs)."""
    import tarfile

    from PIL import Image

    tree = tmp_path / "tree" / "tiny"
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            (tree / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tree / split / name / f"{i}.jpg")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="tiny")
    return archive


def test_an_archive_is_decoded_once_and_again_when_it_changes(tmp_path, monkeypatch):
    import os

    from unipts.data import datasets

    archive = _jpeg_archive(tmp_path)
    first = datasets.cifar10(str(archive), tmp_path / "data")
    assert first.train.images.shape == (6, 3, 32, 32) and first.eval.images.shape == (4, 3, 32, 32)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the JPEG files again")

    with monkeypatch.context() as m:
        m.setattr(datasets, "read_image", no_decoding)
        again = datasets.cifar10(str(archive), tmp_path / "data")
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.eval.labels, first.eval.labels)
    # a changed archive (here: its time) is decoded afresh, not read from the kept copy
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with monkeypatch.context() as m:
        m.setattr(datasets, "read_image", no_decoding)
        with pytest.raises(AssertionError, match="decoded the JPEG files again"):
            datasets.cifar10(str(archive), tmp_path / "data")
