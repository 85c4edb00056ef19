"""The full-data gradual-magnitude-pruning yardstick and the held-out validation split."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import FAST, read_summary, run_cli
from unipts.data import calibration_indices, digits, hold_out_validation
from unipts.lightning.callbacks import cubic_sparsity


def test_cubic_schedule_rises_monotonically_to_the_target_and_stays():
    total = 1000
    values = [cubic_sparsity(step, total, 0.9, start=0.1, end=0.7) for step in range(total + 1)]
    assert values[0] == 0.0 and values[100] == 0.0
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[700] == 0.9 and values[-1] == 0.9
    # Cubic: most of the pruning happens early (half way through, 7/8 of the target is reached).
    assert values[400] == pytest.approx(0.9 * (1 - 0.5 ** 3))


def test_hold_out_validation_is_disjoint_seeded_and_feeds_calibration_from_the_rest():
    splits = digits()
    held = hold_out_validation(splits, 300, seed=1)
    assert len(held.eval) == 300 and len(held.train_labels) == len(splits.train_labels) - 300
    again = hold_out_validation(splits, 300, seed=1)
    first = torch.stack([held.eval[i][0] for i in range(300)])
    assert torch.equal(first, torch.stack([again.eval[i][0] for i in range(300)]))
    # No validation image is a training image, and none is lost: the two are a partition of the
    # training split, and the held-out images are the ones their positions name.
    held_at, rest_at = held.eval.indices, held.train_plain.indices
    assert held.eval.dataset is held.train_plain.dataset is splits.train_plain
    assert not set(held_at) & set(rest_at) and sorted(held_at + rest_at) == list(range(len(splits.train_labels)))
    assert held.train.indices == rest_at
    assert torch.equal(first, torch.stack([splits.train_plain[i][0] for i in held_at]))
    assert hold_out_validation(splits, 300, seed=2).eval.indices != held_at  # the seed draws them
    labels = torch.tensor([held.train[i][1] for i in range(len(held.train_labels))])
    assert torch.equal(labels, held.train_labels)
    indices = calibration_indices(held.train_labels, 64, seed=0)
    assert max(indices) < len(held.train_labels)
    with pytest.raises(ValueError, match="validation.size"):
        hold_out_validation(splits, len(splits.train_labels), seed=0)


def test_hold_out_validation_never_scores_a_training_image():
    """Images that each carry their own number in their pixels: no number is on both sides."""
    from dataclasses import replace

    from unipts.data.datasets import TensorImages

    n = 500
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    data = TensorImages(images, torch.arange(n) % 10, mean=(0.0,), std=(1.0,), scale=1.0)
    splits = replace(digits(), train=data, train_plain=data, eval=data, train_labels=data.labels)
    held = hold_out_validation(splits, 120, seed=3)
    scored = {int(held.eval[i][0][0, 0, 0]) for i in range(len(held.eval))}
    trained = {int(held.train_plain[i][0][0, 0, 0]) for i in range(len(held.train_plain))}
    assert len(scored) == 120 and len(trained) == n - 120
    assert not scored & trained and scored | trained == set(range(n))
    assert sorted(held.train_labels.tolist()) == sorted(i % 10 for i in trained)


@pytest.mark.parametrize("teacher", [False, True], ids=["labels", "teacher"])
def test_gradual_pruning_reaches_the_target_through_the_schedule(tmp_path, cli_env, teacher):
    run_dir = tmp_path / "gmp"
    distil = ["method.trainer.teacher=true", "objective=kd"] if teacher else []
    run_cli("prune", run_dir, *FAST, "method=gmp_full", "method.trainer.epochs=3", "method.trainer.interval=4",
            "data.batch_size=128", *distil, env=cli_env)
    summary = read_summary(run_dir)
    assert summary["method"] == "gmp_full" and summary["masks"] == "gradual"
    assert summary["objective"] == ("kd" if teacher else "ce")
    assert summary["calib_size"] == 1438  # the whole digits training split
    assert abs(summary["achieved_sparsity"] - 0.9) < 0.0005
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert ("train/kl" in header) == teacher  # the distilling module logs its distance to the teacher
    column = header.index("sparsity/scheduled")
    scheduled = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(scheduled) >= 3 and scheduled == sorted(scheduled) and scheduled[0] < 0.9
    state = torch.load(run_dir / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    masks = {k: v for k, v in state.items() if k.endswith(".mask")}
    zeros = sum(int((v == 0).sum()) for v in masks.values())
    assert zeros / sum(v.numel() for v in masks.values()) == pytest.approx(0.9, abs=5e-4)
    assert not any(k.startswith("teacher.") for k in state)  # the dense teacher is not saved with the student


def test_eval_split_val_scores_held_out_training_images(tmp_path, cli_env):
    run_dir = tmp_path / "val"
    run_cli("prune", run_dir, *FAST, "method=magnitude", "eval_split=val", "validation.size=200", env=cli_env)
    summary = read_summary(run_dir)
    assert summary["eval_split"] == "val"
    test_dir = tmp_path / "test"
    run_cli("prune", test_dir, *FAST, "method=magnitude", env=cli_env)
    assert read_summary(test_dir)["eval_split"] == "test"
    # Different images are scored: the calibration subsets differ too (drawn from what is left).
    assert json.loads((run_dir / "calib_indices.json").read_text()) != json.loads(
        (test_dir / "calib_indices.json").read_text())
