"""The accuracy recipe's options: label-free search fitness, distillation-time mixing, and
calibration on a folder of unlabeled images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unipts.data.augment import DistillAugment, MixImages, ResizedCrops
from unipts.models import DigitsNet
from unipts.search import Fitness, search_allocation, split_calibration
from unipts.sparse import masked_layers, sparsify

from .conftest import FAST, prune_refusal, read_summary, run_cli


def _net_and_data(n: int = 64):
    torch.manual_seed(0)
    net = sparsify(DigitsNet(width=4))
    g = torch.Generator().manual_seed(1)
    return net, torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("metric", ["agreement", "kl"])
def test_label_free_fitness_prefers_the_dense_network(metric):
    """With every mask at one the candidate *is* the dense network: perfect agreement, zero KL.
    Any pruned candidate scores lower (or equal, for agreement)."""
    net, x, _ = _net_and_data()
    bn_x, fit_x, _ = split_calibration(x, None)
    fit = Fitness(net, 0.9, bn_x, fit_x, None, metric=metric, noise_std=0.0)
    dense = fit.measure()  # masks still all ones: sparsify() starts dense
    assert dense == pytest.approx(1.0 if metric == "agreement" else 0.0, abs=1e-6)
    pruned = fit.evaluate(torch.zeros(len(fit.names), dtype=torch.float64))
    assert pruned < dense if metric == "kl" else pruned <= dense
    with pytest.raises(ValueError, match="top1"):
        fit.top1()


def test_label_free_search_needs_no_labels_and_hits_the_target():
    net, x, _ = _net_and_data()
    result = search_allocation(net, 0.8, x, None, fitness="kl", population=6, generations=2, parents=3)
    zeros = sum(int((layer.mask == 0).sum()) for _, layer in masked_layers(net))
    assert zeros == sum(result.counts.values())
    assert result.achieved == pytest.approx(0.8, abs=1e-3)
    assert result.fitness <= 0.0  # minus a KL divergence


def test_top1_fitness_refuses_missing_labels():
    net, x, _ = _net_and_data()
    with pytest.raises(ValueError, match="labelled"):
        Fitness(net, 0.9, x[:8], x[8:], None)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_blends_images_of_the_batch_reproducibly(mode):
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    mix = MixImages(mode, alpha=1.0)
    a = mix(x, torch.Generator().manual_seed(0))
    b = mix(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert a.shape == x.shape and not torch.equal(a, x)
    # every pixel is a convex blend (mixup) or a copy (cutmix) of values present in the batch
    assert a.min() >= 0 and a.max() <= 3
    if mode == "cutmix":
        assert set(a.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_mixing_some_images_or_none_after_a_point_of_the_training():
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 8, 8).contiguous()
    changed = lambda y: (y != x).flatten(1).any(1)  # noqa: E731
    assert changed(MixImages("cutmix", prob=0.0)(x, torch.Generator().manual_seed(0))).sum() == 0
    some = changed(MixImages("mixup", prob=0.5)(x, torch.Generator().manual_seed(0)))
    assert 0 < some.sum() < 8
    late = MixImages("cutmix", until=0.8)
    assert changed(late(x, torch.Generator().manual_seed(0), progress=0.79)).sum() > 0
    assert torch.equal(late(x, torch.Generator().manual_seed(0), progress=0.8), x)


def _columns(b: int = 16, size: int = 32) -> torch.Tensor:
    """Images whose every pixel holds its column's index."""
    return torch.arange(size, dtype=torch.float32).view(1, 1, 1, size).expand(b, 3, size, size).contiguous()


@pytest.mark.parametrize("min_area", [0.25, 1.0])
def test_resized_crops_stretch_a_random_part_of_each_image(min_area):
    x = _columns()
    crops = ResizedCrops(min_area)
    a = crops(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, crops(x, torch.Generator().manual_seed(0)))  # reproducible from the generator
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 31  # interpolated, never outside the image
    rows = a[:, 0, 0, :]
    assert (rows.diff(dim=1) >= -1e-4).all()  # not flipped, not shuffled: a stretched part of the row
    # the part is at least sqrt(min_area * 3/4) of the width (the narrowest rectangle), and zoomed
    # in with a small min_area
    span = rows[:, -1] - rows[:, 0]
    assert (span >= 31 * (min_area * 0.75) ** 0.5 - 1.5).all()
    assert (span.mean() < 28) == (min_area < 1)


def test_distill_augment_crops_then_mixes_with_one_generator():
    x = _columns(8)
    chain = DistillAugment(ResizedCrops(0.5), MixImages("cutmix"))
    gen = torch.Generator().manual_seed(3)
    by_hand = MixImages("cutmix")(ResizedCrops(0.5)(x, gen), gen, 0.5)
    assert torch.equal(chain(x, torch.Generator().manual_seed(3), progress=0.5), by_hand)
    # at the end of the training (progress 1: mix_until's default) only the crops remain
    assert torch.equal(chain(x, torch.Generator().manual_seed(3), progress=1.0),
                       ResizedCrops(0.5)(x, torch.Generator().manual_seed(3)))


def test_the_datamodule_tells_the_augmentation_how_far_the_training_is():
    from unipts.data import digits
    from unipts.lightning import CalibrationDataModule

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, generator=None, progress=0.0):
            seen.append(progress)
            return x

    dm = CalibrationDataModule(digits(augment=False), list(range(32)), distill_augment=Spy())
    batch = (torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    for epoch in (0, 5):
        dm.trainer = SimpleNamespace(training=True, current_epoch=epoch, max_epochs=10, global_rank=0)
        dm.on_after_batch_transfer(batch, 0)
    assert seen == [0.0, 0.5]


def test_mix_refuses_unknown_modes():
    with pytest.raises(ValueError, match="mixup"):
        MixImages("blend")


def _write_digit_images(folder, count: int = 96) -> None:
    """The first digits training images as 8x8 grayscale PNG files in one flat folder, no labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir()
    for i, image in enumerate(load_digits().images[:count]):
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(folder / f"img{i:03d}.png")


def test_prune_calibrates_on_a_folder_of_unlabeled_images(tmp_path, cli_env):
    images = tmp_path / "unlabeled"
    _write_digit_images(images)
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, f"calib.root={images}", "allocation=search", "allocation.fitness=kl",
            "allocation.population=4", "allocation.generations=2", "allocation.parents=2", "finetune.mix=mixup",
            env=cli_env)
    summary = read_summary(run_dir)
    assert summary["calib_size"] == 64
    assert summary["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    # scored on the labelled test split: 0.84 on an AVX2-only CPU, 0.94 on others (two epochs swing
    # with the arithmetic); the same run calibrated on 96 noise images scores 0.23 to 0.42
    assert summary["top1"] > 0.7


@pytest.mark.parametrize("overrides, key", [
    (["calib.root=MISSING", "allocation=search"], "calib.root"),
    (["calib.root=FOLDER", "allocation=search", "allocation.fitness=top1"], "allocation.fitness"),
    (["calib.root=FOLDER", "calib.balanced=true", "allocation.fitness=kl"], "calib.balanced"),
    (["finetune.mix=blend"], "finetune.mix"),
    (["finetune.mix_prob=1.5"], "finetune.mix_prob"),
    (["finetune.mix_until=-0.1"], "finetune.mix_until"),
    (["finetune.crop_min_area=0"], "finetune.crop_min_area"),
    (["method=magnitude", "method/trainer=ce", "finetune.mix=mixup"], "finetune.mix"),
    (["allocation=search", "allocation.fitness=loss"], "allocation.fitness"),
    (["finetune.holdout_images=64"], "finetune.holdout_images"),
    (["dynamic.ramp=1.0"], "dynamic.ramp"),
    (["objective.features=[nope]", "objective.feature_weight=1.0"], "objective.features"),
    (["objective.feature_weight=-1"], "objective.feature_weight"),
    (["dynamic.ramp=0.5", "sparsity.pattern=2:4", "sparsity.target=0.5"], "dynamic.ramp"),
])
def test_recipe_options_refuse_bad_input_in_one_line(overrides, key, tmp_path, cli_env):
    folder = tmp_path / "images"
    folder.mkdir()
    overrides = [o.replace("MISSING", str(tmp_path / "nope")).replace("FOLDER", str(folder)) for o in overrides]
    message = prune_refusal(tmp_path / "run", *FAST, *overrides, cache_dir=cli_env["UNIPTS_CACHE_DIR"])
    assert message.startswith(f"{key}:"), message


def test_keep_best_returns_the_best_scored_state_and_reports_it(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, "allocation=erk", "finetune.holdout_images=16", env=cli_env)
    chosen = read_summary(run_dir)["keep_best"]
    assert chosen["heldout_images"] == 16
    # The start and each of FAST's 2 epochs were scored (the epochs' scores are in the CSV log):
    # what the summary reports is the lowest of the three, and the epoch that scored it.
    scores = {-1: chosen["start_heldout_kl"], **_logged_heldout_kl(run_dir)}
    assert sorted(scores) == [-1, 0, 1]
    best = min(scores, key=scores.get)
    assert chosen["epoch"] == best and chosen["heldout_kl"] == pytest.approx(scores[best], rel=1e-6)
    assert chosen["last_heldout_kl"] == pytest.approx(scores[1], rel=1e-6)
    assert chosen["returned"] == ("the one-shot start" if best == -1 else f"the student after epoch {best}")


def _logged_heldout_kl(run_dir) -> dict[int, float]:
    import csv

    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return {int(r["epoch"]): float(r["select/heldout_kl"]) for r in rows if r.get("select/heldout_kl")}


class _KeepBestStub:
    """What KeepBestStudent touches of a LightningModule: the student, the teacher, the device, log()."""

    device = torch.device("cpu")

    def __init__(self, student, teacher):
        self.student, self.teacher = student, teacher

    def network(self):
        return self.student

    def log(self, *args, **kwargs):
        pass


def test_keep_best_puts_back_the_lowest_scoring_state_whichever_epoch_it_was():
    """Epoch 1 of 3 is the student closest to the teacher: its weights come back at the end, its
    score and epoch are reported; the start and the last epoch are not."""
    from unipts.lightning import KeepBestStudent

    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    student = torch.nn.Linear(4, 3)
    images = torch.randn(32, 4)
    callback = KeepBestStudent(images)
    stub = _KeepBestStub(student, teacher)
    noise = {-1: 1.0, 0: 0.5, 1: 0.05, 2: 0.8}  # how far each state is from the teacher
    states = {}
    for epoch, scale in noise.items():
        with torch.no_grad():
            for mine, theirs in zip(student.parameters(), teacher.parameters()):
                mine.copy_(theirs + scale * torch.randn_like(theirs))
        states[epoch] = {k: v.clone() for k, v in student.state_dict().items()}
        if epoch == -1:
            callback.on_fit_start(None, stub)
        else:
            callback.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), stub)
    assert callback.best_epoch == 1 and callback.describe() == "the student after epoch 1"
    assert callback.best_score < callback.start_score and callback.best_score < callback.last_score
    callback.on_fit_end(SimpleNamespace(current_epoch=3), stub)
    assert all(torch.equal(v, states[1][k]) for k, v in student.state_dict().items())
    assert callback.summary()["epoch"] == 1 and callback.summary()["heldout_kl"] == callback.best_score
    assert callback.best_score == pytest.approx(callback.score(stub))  # the state put back is the one scored
    # The same student again, but the last epoch is the best: nothing is put back.
    late = KeepBestStudent(images)
    for epoch, scale in {-1: 1.0, 0: 0.5, 1: 0.05}.items():
        with torch.no_grad():
            for mine, theirs in zip(student.parameters(), teacher.parameters()):
                mine.copy_(theirs + scale * torch.randn_like(theirs))
        (late.on_fit_start(None, stub) if epoch == -1 else
         late.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), stub))
    last = {k: v.clone() for k, v in student.state_dict().items()}
    late.on_fit_end(SimpleNamespace(current_epoch=2), stub)
    assert late.best_epoch == 1 and all(torch.equal(v, last[k]) for k, v in student.state_dict().items())


def test_search_stops_early_once_the_best_stops_improving():
    from unipts.search import genetic_search

    flat = genetic_search(lambda pop: torch.zeros(len(pop), dtype=torch.float64), 5, population=6, generations=20,
                          parents=3, patience=3)
    assert len(flat.history) == 4  # the first generation sets the best, three more without improvement
    calls = iter(range(100))
    rising = genetic_search(lambda pop: torch.full((len(pop),), float(next(calls)), dtype=torch.float64), 5,
                            population=6, generations=8, parents=3, patience=3)
    assert len(rising.history) == 8  # every generation beats the last: no early stop


class _StubModule:
    """What DynamicSparsity touches of a LightningModule."""

    def __init__(self, net):
        self.net = net

    def network(self):
        return self.net

    def log(self, *args, **kwargs):
        pass


def test_an_experiments_ramp_binds_only_unipts_under_n_m(tmp_path):
    """experiment=cifar10_resnet20 ramps UniPTS's masks. N:M fixes each layer's sparsity, so UniPTS
    under N:M is told to turn the ramp off; a baseline never reads the ramp, so it is not refused."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from unipts import UniptsError
    from unipts.cli._entry import CONFIG_DIR
    from unipts.spec import build_prune_spec

    repo = Path(__file__).resolve().parent.parent
    common = ["experiment=cifar10_resnet20", f"paths.root={repo}", f"data.root={tmp_path}",
              f"paths.data_dir={tmp_path}", f"paths.cache_dir={tmp_path}", f"paths.output_dir={tmp_path}",
              "sparsity.pattern=2:4", "sparsity.target=0.5"]  # every path given: no Hydra job resolves them here
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        baseline = compose("prune", overrides=[*common, "method=magnitude"])
        unipts = compose("prune", overrides=[*common, "method=unipts"])
        unramped = compose("prune", overrides=[*common, "method=unipts", "dynamic.ramp=0"])
    assert unipts.dynamic.ramp > 0  # the experiment's default, or this test shows nothing
    build_prune_spec(baseline)
    build_prune_spec(unramped)
    with pytest.raises(UniptsError, match="dynamic.ramp"):
        build_prune_spec(unipts)


def _static_masks_over_a_ramp(steps: int):
    """A network masked at 0.8 in every layer and a DynamicSparsity with static masks ramped over
    half of ``steps``, its fit started: (network, callback, module stub)."""
    from unipts.lightning.callbacks import DynamicSparsity
    from unipts.sparse import allocate, set_masks_

    net, _, _ = _net_and_data()
    set_masks_(net, allocate(net, "uniform", 0.8))
    ramp, module = DynamicSparsity(interval=0, ramp=0.5), _StubModule(net)
    ramp.on_train_start(SimpleNamespace(estimated_stepping_batches=steps), module)
    return net, ramp, module


def test_ramp_raises_each_layer_to_its_sparsity_and_no_further():
    from unipts.lightning.callbacks import DynamicSparsity
    from unipts.sparse import masks_at_target, zero_counts

    net, ramp, module = _static_masks_over_a_ramp(20)
    targets = zero_counts(net)
    pruned = []
    for step in range(20):
        ramp.on_train_batch_start(SimpleNamespace(global_step=step), module, None, step)
        pruned.append(sum(int((layer.mask == 0).sum()) for _, layer in masked_layers(net)))
        if step == 0:
            assert pruned[0] == 0 and not masks_at_target(net)  # the fine-tune starts from the dense weights
    assert pruned == sorted(pruned)  # never less sparse than the step before
    assert pruned[10] == pruned[-1] == sum(targets.values())  # at full sparsity after half the steps, then kept
    assert masks_at_target(net)
    with pytest.raises(ValueError, match="dynamic.ramp"):
        DynamicSparsity(ramp=1.0)


@pytest.mark.parametrize("steps", [20, 21])  # the ramp ends on a step, and between two
def test_static_masks_keep_what_the_ramp_ended_with_to_the_end(steps):
    from unipts.sparse import masks_at_target

    net, static, module = _static_masks_over_a_ramp(steps)
    for step in range(steps):
        static.on_train_batch_start(SimpleNamespace(global_step=step), module, None, step)
        if step == steps // 2 + 1:
            assert masks_at_target(net)  # reached at the ramp's end, not left to the fit's
            ended_with = [layer.mask.clone() for _, layer in masked_layers(net)]
            with torch.no_grad():  # what the straight-through gradient does to the pruned weights
                for _, layer in masked_layers(net):
                    layer.weight.add_(10.0 * (1 - layer.mask) * torch.randn_like(layer.weight))
    static.on_train_end(SimpleNamespace(global_step=steps), module)
    assert all(torch.equal(layer.mask, mask) for (_, layer), mask in zip(masked_layers(net), ended_with))


def test_ramped_fine_tune_ends_at_the_exact_target_and_keeps_only_sparse_states(tmp_path, cli_env):
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, "finetune.epochs=4", "allocation=erk", "dynamic.ramp=0.5",
            "finetune.holdout_images=16", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["achieved_sparsity"] == pytest.approx(summary["target_sparsity"], abs=1e-3)
    # epochs 0 and 1 end part-way up the ramp, so only the one-shot start and epochs 2-3 compete
    chosen = summary["keep_best"]
    scores = {-1: chosen["start_heldout_kl"], **_logged_heldout_kl(run_dir)}
    assert sorted(scores) == [-1, 2, 3]  # no score logged part-way up the ramp
    assert chosen["epoch"] == min(scores, key=scores.get)


def test_feature_distance_is_zero_only_on_the_teachers_features():
    from unipts.objectives import FeatureTap, feature_distance

    net, x, _ = _net_and_data()
    tap = FeatureTap(net, ["features.2", "fc"])
    with torch.no_grad():
        net(x)
    same = tap.take()
    assert [t.shape[0] for t in same] == [len(x)] * 2 and not tap.outputs
    assert float(feature_distance(same, same)) == 0.0
    shifted = [t + 0.1 * t.std() for t in same]
    assert float(feature_distance(shifted, same)) > 0.0
    with pytest.raises(ValueError, match="top-level modules are"):
        FeatureTap(net, ["layer9"])


def test_feature_distillation_runs_and_logs_its_term(tmp_path, cli_env):
    import csv

    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, "allocation=erk", "objective.features=[features.2,features.5]",
            "objective.feature_weight=1.0", env=cli_env)
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    terms = [float(r["train/features"]) for r in rows if r.get("train/features")]
    assert terms and all(t > 0 for t in terms)


@pytest.mark.parametrize("bn_train", [True, False])
def test_teacher_batchnorm_follows_teacher_bn_train_inside_a_fit(bn_train):
    """Lightning does not call ``train()`` when a fit starts, so the module sets the teacher's mode
    itself: BatchNorm on batch statistics with ``teacher_bn_train``, on its running statistics
    without (which once changed nothing), and the running statistics never move either way."""
    import copy

    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from unipts.lightning.module import SparseFinetune
    from unipts.objectives import BaseDecayedKL

    student, x, y = _net_and_data()
    teacher = copy.deepcopy(student)
    running = {k: v.clone() for k, v in teacher.state_dict().items() if "running" in k}
    seen = []

    class Probe(SparseFinetune):
        def training_step(self, batch, batch_idx):
            seen.append({m.training for m in self.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)})
            return super().training_step(batch, batch_idx)

    module = Probe(student, teacher, BaseDecayedKL(), 10, teacher_bn_train=bn_train)
    trainer = pl.Trainer(max_epochs=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer.fit(module, loader, loader)
    assert seen and all(modes == {bn_train} for modes in seen)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in running.items())


def test_bf16_fine_tune_on_the_cpu_keeps_float32_weights_and_the_exact_sparsity(tmp_path, cli_env):
    """Under bfloat16 autocast the fine-tune computes in bfloat16 but keeps the weights, their
    masks and the checkpoint in float32, and ends at the target exactly."""
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *FAST, "allocation=erk", "trainer.precision=bf16-mixed", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["config"]["trainer"]["precision"] == "bf16-mixed"
    assert summary["achieved_sparsity"] == pytest.approx(summary["target_sparsity"], abs=1e-3)
    state = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert torch.bfloat16 not in {t.dtype for t in state.values()}
    assert {t.dtype for name, t in state.items() if name.endswith("weight")} == {torch.float32}


@pytest.mark.parametrize("accelerator, precision, native, flagged", [
    ("cpu", "bf16-mixed", False, True),   # emulated: slower than float32
    ("cpu", "bf16-mixed", True, False),
    ("cpu", "32-true", False, False),
    ("gpu", "bf16-mixed", False, False),  # the CPU's instructions do not matter on a GPU
])
def test_bf16_on_a_cpu_without_bfloat16_instructions_is_flagged(monkeypatch, accelerator, precision, native, flagged):
    from unipts.pipeline.builders import cpu_lacks_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_lacks_bf16({"accelerator": accelerator, "precision": precision}) is flagged


@pytest.mark.parametrize("override,message", [
    ("objective.teacher_temperature=0", "objective.teacher_temperature: 0 must be > 0.0"),
    ("objective.tau0=-1", "objective.tau0: -1 must be > 0.0"),
    ("objective.gamma=0", "objective.gamma: 0 is outside (0.0, 1.0]"),
    ("objective.gamma=1.5", "objective.gamma: 1.5 is outside (0.0, 1.0]"),
    ("objective.decay_per=batch", "objective.decay_per: 'batch' is not one of ['epoch', 'step']"),
])
def test_the_objective_is_checked_before_any_work(override, message):
    """A temperature of 0 was a NaN loss after the dense model and the search; a bad gamma was
    reported under objective.features."""
    from unipts import UniptsError
    from unipts.spec import build_prune_spec

    from .test_config import _compose

    with pytest.raises(UniptsError) as err:
        build_prune_spec(_compose([override]))
    assert str(err.value) == message
