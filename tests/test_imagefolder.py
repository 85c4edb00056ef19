"""ImageFolder trees at ImageNet scale: 224 px JPEGs through torchvision's ResNet-18 with loader
workers, and a 1,000-class checkpoint calibrated on some of its classes (data.class_index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import prune_refusal, read_summary, run_cli

# Solid colours with pixel noise: classes a random network's features still tell apart.
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
# 1,000 made-up class names, listed in an order that is not their sorted order, so that the sorted
# positions of the folders say nothing about their classes.
CLASS_NAMES = [f"wn{(i * 7919) % 1000:04d}" for i in range(1000)]
CHOSEN = [998, 404, 17]  # the classes the folders hold, in the folders' sorted order


def _jpeg_tree(root: Path, classes: list[str], train: int = 8, val: int = 4, size: int = 224) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name, colour in zip(classes, COLOURS):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)
    return root


def _class_list(path: Path) -> Path:
    path.write_text("\n".join(CLASS_NAMES) + "\n")
    return path


def _folder_names() -> list[str]:
    names = [CLASS_NAMES[i] for i in CHOSEN]
    assert names == sorted(names) and sorted(CHOSEN) != CHOSEN  # the premise of the tests below
    return names


TINY = ["trainer.enable_progress_bar=false", "data.batch_size=4", "data.eval_batch_size=12", "model=resnet18",
        "data=imagefolder"]


@pytest.mark.slow
def test_resnet18_prunes_a_224px_image_folder_with_loader_workers(tmp_path, cli_env):
    import torchvision

    root = _jpeg_tree(tmp_path / "images", ["a", "b", "c"])
    ckpt = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), ckpt)
    run_dir = tmp_path / "run"
    run_cli("prune", run_dir, *TINY, f"data.root={root}", f"dense_ckpt={ckpt}", "data.num_workers=2",
            "allocation=erk", "finetune.epochs=1", "calib.size=8", "sparsity.target=0.8", env=cli_env)
    summary = read_summary(run_dir)
    assert abs(summary["achieved_sparsity"] - 0.8) < 0.0005
    assert summary["config"]["data"]["num_workers"] == 2 and summary["config"]["data"]["image_size"] == 224
    assert 0.0 <= summary["top1"] <= 1.0 and summary["top5"] == 1.0  # three classes: top-5 is every class


def _rigged_checkpoint(root: Path, path: Path) -> Path:
    """A torchvision ResNet-18 with 1,000 outputs that tells the tree's classes apart, predicting
    only the listed classes CHOSEN: BatchNorm statistics measured on the training images, and the
    head a nearest-class-mean classifier on the network's features, for those rows only."""
    import torchvision
    from torchvision import transforms as T

    from unipts.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    from PIL import Image

    preprocess = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    folders = sorted(p for p in (root / "train").iterdir())
    images = [[preprocess(Image.open(f).convert("RGB")) for f in sorted(folder.iterdir())] for folder in folders]
    x = torch.stack([img for per_class in images for img in per_class])
    net = torchvision.models.resnet18(num_classes=1000)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # a cumulative average: the statistics of these images
        net.train()(x)
        net.eval()
        head, net.fc = net.fc, torch.nn.Identity()
        features = net(x).split([len(per_class) for per_class in images])
        net.fc = head
        means = torch.stack([f.mean(0) for f in features])
        head.bias.fill_(-1e4)  # the classes the folders do not hold never win (their weights stay random,
        # not zero: zeros would count as pruned and the achieved sparsity would overshoot)
        head.weight[CHOSEN] = means
        head.bias[CHOSEN] = -0.5 * (means ** 2).sum(1)  # argmax of w.f - |w|^2/2 = the nearest mean
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_a_1000_class_checkpoint_is_calibrated_and_scored_on_its_listed_classes(tmp_path, cli_env):
    root = _jpeg_tree(tmp_path / "images", _folder_names())
    ckpt = _rigged_checkpoint(root, tmp_path / "resnet18-1000.pth")
    class_list = _class_list(tmp_path / "classes.txt")
    run_dir = tmp_path / "run"
    # The search scores top-1 against the labels on BN images drawn three per class; its images are
    # decoded by the default number of loader processes (auto).
    run_cli("prune", run_dir, *TINY, f"data.root={root}", f"dense_ckpt={ckpt}", "data.num_workers=auto",
            "data.num_classes=1000", f"data.class_index={class_list}", "calib.size=9", "calib.balanced=true",
            "finetune.epochs=0", "sparsity.target=0.5", "allocation.population=2", "allocation.parents=1",
            "allocation.generations=1", "allocation.fitness_on_bn_images=true", "allocation.noise_std=0", env=cli_env)
    summary = read_summary(run_dir)
    # The head predicts only the listed classes 998, 404 and 17: scored against the folders' sorted
    # positions (0, 1, 2) every figure here would be 0.
    assert summary["dense_top1"] == 1.0
    assert summary["search_fitness"] >= 2 / 3 and summary["top1"] >= 2 / 3
    # scored on its BN images: two passes over the 9 images per candidate
    assert summary["search_forward_images"] == summary["search_evaluations"] * 2 * 9 > 0
    assert abs(summary["achieved_sparsity"] - 0.5) < 0.0005


# -- labels of class folders (unit) ---------------------------------------------------------------

def _png_tree(root: Path, classes: list[str]) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4), COLOURS[i]).save(root / split / name / f"{i}.png")
    return root


def test_listed_classes_label_every_split_with_the_networks_indices(tmp_path):
    from unipts.data import imagefolder

    root = _png_tree(tmp_path / "tree", _folder_names())
    splits = imagefolder(str(root), image_size=4, resize=4, num_classes=1000,
                         class_index=_class_list(tmp_path / "classes.txt"))
    assert splits.num_classes == 1000
    assert splits.train_labels.tolist() == [998, 998, 404, 404, 17, 17]  # folders in sorted order
    assert [y for _, y in splits.eval] == [998, 998, 404, 404, 17, 17]
    assert [splits.train_plain[i][1] for i in range(6)] == splits.train_labels.tolist()
    # The list alone sets the class count; without one, each folder is a class as before.
    assert imagefolder(str(root), image_size=4, resize=4, class_index=tmp_path / "classes.txt").num_classes == 1000
    plain = imagefolder(str(root), image_size=4, resize=4, num_classes=3)
    assert plain.num_classes == 3 and plain.train_labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("num_classes,listed,message", [
    (2, None, "data.num_classes: 2 is smaller than the 3 class folders of"),
    (1000, None, "data.class_index: needed: data.num_classes is 1000 but"),
    (999, CLASS_NAMES, "lists 1000 classes but data.num_classes is 999"),
    (1000, CLASS_NAMES[:500], "lists 500 classes but data.num_classes is 1000"),
    (500, CLASS_NAMES[:500], "1 class folder(s) of"),  # 998 is not among the first 500
    (None, ["x", "y", "x"], "names 'x' on lines 1 and 3"),
    (None, ["", "\n"], "lists no class"),
], ids=["fewer classes than folders", "no list", "list longer", "list shorter", "folder not listed",
        "a name twice", "empty list"])
def test_class_labels_refuse_what_cannot_be_labelled(tmp_path, num_classes, listed, message):
    from unipts import UniptsError
    from unipts.data.datasets import class_labels

    index = None
    if listed is not None:
        index = tmp_path / "classes.txt"
        index.write_text("\n".join(listed))
    with pytest.raises(UniptsError) as err:
        class_labels(_folder_names(), tmp_path / "train", num_classes, index)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- one-line refusals from the command line ------------------------------------------------------

REFUSED = [
    (["data.num_classes=1000", "data.class_index=LIST", "+EXTRA=not-listed"], "data.class_index",
     "class folder(s) of"),
    (["data.num_classes=2"], "data.num_classes", "smaller than the 3 class folders"),
    (["data.num_workers=many"], "data.num_workers", "valid: auto"),
    (["data.num_workers=-2"], "data.num_workers", "valid: auto"),
    (["data.class_index=MISSING"], "data.class_index", "is not a file"),
]


@pytest.mark.parametrize("overrides,key,what", REFUSED, ids=[" ".join(o) for o, _, _ in REFUSED])
def test_class_and_worker_settings_refuse_bad_input_in_one_line(tmp_path, cli_env, overrides, key, what):
    names = _folder_names()
    extra = [o.split("=", 1)[1] for o in overrides if o.startswith("+EXTRA=")]
    root = _png_tree(tmp_path / "tree", names + extra)  # a folder the list does not name, when asked
    class_list, missing = str(_class_list(tmp_path / "classes.txt")), str(tmp_path / "nope")
    overrides = [o.replace("LIST", class_list).replace("MISSING", missing) for o in overrides if not o.startswith("+EXTRA=")]
    dense = tmp_path / "dense.pt"
    dense.write_bytes(b"")  # never read: the run stops before it loads the network
    message = prune_refusal(tmp_path / "run", *TINY, f"data.root={root}", "data.image_size=4", "data.resize=4",
                            f"dense_ckpt={dense}", *overrides, cache_dir=cli_env["UNIPTS_CACHE_DIR"])
    assert message.startswith(f"{key}:") and what in message, message


def test_a_blank_line_among_the_class_names_is_refused(tmp_path):
    """Issue 27: it became a class named '' (trailing blank lines are still only the file's end)."""
    from unipts import UniptsError
    from unipts.data.datasets import read_class_index

    listed = tmp_path / "classes.txt"
    listed.write_text("cat\ndog\n\n")
    assert read_class_index(listed) == ["cat", "dog"]
    listed.write_text("cat\n\ndog\n")
    with pytest.raises(UniptsError, match=r"^data.class_index: .*classes.txt has a blank line \(line 2\) among its "
                                          r"class names; each line names one class"):
        read_class_index(listed)


def test_calibration_files_that_are_not_read_are_said(tmp_path, caplog):
    """Issue 27: a .gif in calib.root was left out without a word."""
    from PIL import Image

    from unipts.data import unlabeled_calibration
    from unipts.data.datasets import digits

    for name in ("a.png", "b.gif"):
        Image.new("L", (8, 8), 128).save(tmp_path / name)
    (tmp_path / ".DS_Store").write_bytes(b"")  # hidden files are nobody's images
    caplog.set_level("INFO", logger="unipts")
    splits = unlabeled_calibration(tmp_path, digits())
    assert len(splits.train_labels) == 1
    assert f"calib.root: 1 file(s) under {tmp_path} are not read (not .jpg/" in caplog.text
    assert f"e.g. {tmp_path / 'b.gif'}" in caplog.text
