"""Data sets as plain PyTorch: scikit-learn digits, CIFAR-10 (JPEG archive, ImageFolder tree or
torchvision's files), and any train/val ImageFolder root such as ImageNet."""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..common import UniptsError
from .augment import BatchAugment

log = logging.getLogger("unipts")

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TensorImages(Dataset):
    """Images held in memory as uint8 (or float) ``N x C x H x W``, normalised on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, scale: float = 255.0) -> None:
        self.images, self.labels, self.scale = images, labels.long(), scale
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float() / self.scale
        return (x - self.mean) / self.std, self.labels[i]


@dataclass
class Splits:
    """What a data set gives the rest of the application."""

    train: Dataset  # what the fine-tune iterates (per-image augmentation included, if any)
    train_plain: Dataset  # the same images and order, without augmentation (BN passes, search)
    eval: Dataset
    train_labels: torch.Tensor
    num_classes: int
    in_channels: int
    batch_augment: BatchAugment | None  # augmentation applied per batch, for in-memory sets
    skipped_images: list[str] = field(default_factory=list)  # unreadable files left out (data.skip_bad_images)


def hold_out_validation(splits: Splits, size: int, seed: int = 0) -> Splits:
    """Carve ``size`` seeded training images out as the evaluation split, for choosing
    hyper-parameters without looking at the test images; the rest stay the training split (the
    calibration subset is then drawn from them only)."""
    n = len(splits.train_labels)
    if not 1 <= size < n:
        raise ValueError(f"validation.size: {size} must be in [1, {n - 1}] (the training split has {n} images)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, rest = order[:size].tolist(), order[size:].tolist()
    return replace(splits, train=Subset(splits.train, rest), train_plain=Subset(splits.train_plain, rest),
                   eval=Subset(splits.train_plain, held), train_labels=splits.train_labels[rest])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
UNLABELED = -1  # the label of a calibration image that has none


class ImageFiles(Dataset):
    """Image files without labels, through a torchvision transform: ``(image, UNLABELED)``."""

    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.paths[i])), UNLABELED


def unlabeled_calibration(root: str | Path, splits: Splits) -> Splits:
    """``splits`` with its training split replaced by the images under ``root`` (any layout, no
    labels): distillation, the label-free search and BN re-estimation need no labels, so
    calibration data can be a plain folder of images. The evaluation split stays as it is.

    In-memory data sets (digits, CIFAR-10) read the files into memory at the data set's image
    size and normalisation; ImageFolder data sets read them through their own transforms.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UniptsError(f"calib.root: {base} is not a folder of images")
    files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
    paths = [str(p) for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise UniptsError(f"calib.root: no image files under {base} (looked for {', '.join(IMAGE_SUFFIXES)})")
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:  # a .gif or a .heic left out must not go unnoticed
        log.warning("calib.root: %d file(s) under %s are not read (not %s), e.g. %s", len(others), base,
                    "/".join(IMAGE_SUFFIXES), others[0])
    if isinstance(splits.train_plain, TensorImages):
        like = splits.train_plain
        size = tuple(like.images.shape[-2:])
        mode = "L" if like.images.shape[1] == 1 else "RGB"
        images = np.stack([np.asarray(read_image(p, "calib.root").convert(mode).resize(size[::-1]))
                           for p in paths]).reshape(len(paths), *size, -1)
        # Pixel values in [0, 255]: scale 255 maps them onto [0, 1], where the data set's mean/std live.
        train = TensorImages(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                             torch.full((len(paths),), UNLABELED), like.mean.flatten().tolist(),
                             like.std.flatten().tolist(), scale=255.0)
        train_plain = train
    else:
        train = ImageFiles(paths, getattr(splits.train, "transform", None))
        train_plain = ImageFiles(paths, getattr(splits.train_plain, "transform", None))
    log.info("calibration: %d unlabeled images from %s (calib.root)", len(paths), base)
    return replace(splits, train=train, train_plain=train_plain,
                   train_labels=torch.full((len(paths),), UNLABELED, dtype=torch.long))


def _fixed_classes(num_classes: int | None, classes: int, name: str) -> None:
    """A data set whose labels are fixed: a network for it has exactly that many classes."""
    if num_classes not in (None, classes):
        raise UniptsError(f"data.num_classes: {num_classes}, but data={name} has {classes} classes; valid: {classes}")


def digits(test_fraction: float = 0.2, split_seed: int = 0, augment: bool = True, num_classes: int | None = 10) -> Splits:
    """scikit-learn's bundled 8x8 digit images (1,797), split deterministically into train/test."""
    from sklearn.datasets import load_digits

    _fixed_classes(num_classes, 10, "digits")

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # values 0..16
    labels = torch.tensor(bunch.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    mean, std = (float(images[train].mean() / 16),), (float(images[train].std() / 16),)
    train_set = TensorImages(images[train], labels[train], mean, std, scale=16.0)
    return Splits(
        train=train_set, train_plain=train_set,
        eval=TensorImages(images[test], labels[test], mean, std, scale=16.0),
        train_labels=labels[train], num_classes=10, in_channels=1,
        batch_augment=BatchAugment(pad=1) if augment else None,
    )


def _extract_archive(archive: Path, data_dir: Path) -> Path:
    """Unpack a .tar.gz once under ``data_dir``; a half-finished unpack is never left in place."""
    name = archive.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar")
    target = data_dir / "extracted" / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            tmp.rename(target)
        except OSError:
            # Another process (a parallel sweep job) unpacked the same archive first: use its copy.
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    children = [p for p in target.iterdir() if p.is_dir()]
    # An archive usually wraps its tree in one top-level folder.
    return children[0] if len(children) == 1 and not (target / "train").exists() else target


def read_image(path: str, key: str = "data.root"):
    """An image file as RGB, or a :class:`UniptsError` naming the file (and the config ``key``
    it came from)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError... for a bad file
        hint = " (data.skip_bad_images=true skips such files)" if key == "data.root" else ""
        raise UniptsError(f"{key}: cannot read image {path}: {exc}{hint}") from exc


def _readable_samples(samples: list[tuple[str, int]], skip_bad: bool, skipped: list[str]) -> list[tuple[str, int]]:
    """The samples whose file opens (``skip_bad``; the others are appended to ``skipped``)."""
    from PIL import Image

    if not skip_bad:
        return samples
    good = []
    for path, target in samples:
        try:
            with Image.open(path) as img:
                img.load()
            good.append((path, target))
        except Exception:
            skipped.append(path)
    if skipped:
        log.warning("data: skipped %d unreadable image(s) (data.skip_bad_images=true), e.g. %s", len(skipped), skipped[0])
    return good


def _class_folders(root: Path) -> list[str]:
    """The class folders of an ImageFolder tree, each holding at least one image file; an empty
    one would make torchvision fail, and the class indices depend on the complete list."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UniptsError(f"data.root: {root} holds no class folder (expected {root}/<class>/<image files>)")
    for name in classes:
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in (root / name).rglob("*") if f.is_file()):
            raise UniptsError(f"data.root: class folder {root / name} holds no image file "
                              f"({', '.join(IMG_EXTENSIONS)}); remove it from every split, or add its images")
    return classes


def check_same_classes(train_root: Path, eval_root: Path) -> list[str]:
    """The class folders (sorted) of both splits, which must be the same: class indices come from
    the sorted folder names of each split, and a class missing from one split, or named otherwise,
    shifts every later index and the accuracy is silently wrong."""
    train, other = _class_folders(train_root), _class_folders(eval_root)
    if train != other:
        only_train, only_eval = sorted(set(train) - set(other)), sorted(set(other) - set(train))
        raise UniptsError(f"data.root: the class folders of {train_root} and {eval_root} differ: only in "
                          f"{train_root.name}/: {only_train}, only in {eval_root.name}/: {only_eval}; "
                          "both splits need the same classes")
    return train


def read_class_index(path: str | Path) -> list[str]:
    """The class list of ``data.class_index``: line i names the network's class i (ImageNet's
    WNIDs in sorted order are such a list). Trailing empty lines are not classes."""
    file = Path(path).expanduser()
    try:
        names = [line.strip() for line in file.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UniptsError(f"data.class_index: cannot read {file}: {exc}") from exc
    while names and not names[-1]:
        names.pop()
    if not names:
        raise UniptsError(f"data.class_index: {file} lists no class (expected one class name per line)")
    if "" in names:  # a class named '' would match no folder and shift no label: a slip, never meant
        raise UniptsError(f"data.class_index: {file} has a blank line (line {names.index('') + 1}) among its class "
                          "names; each line names one class of the network, in the order of its outputs")
    first_line: dict[str, int] = {}
    for line, name in enumerate(names, 1):
        if name in first_line:
            raise UniptsError(f"data.class_index: {file} names {name!r} on lines {first_line[name]} and {line}; "
                              "each line names one class of the network, each class once")
        first_line.setdefault(name, line)
    return names


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def class_labels(folders: list[str], where: Path, num_classes: int | None = None,
                 class_index: str | Path | None = None) -> tuple[dict[str, int] | None, int]:
    """How the class ``folders`` (sorted) found under ``where`` are labelled, and the number of
    classes the network has: ``(None, len(folders))`` for one class per folder in sorted order
    (torchvision's ImageFolder labels), else ``({folder: the network's class index}, classes)``.

    A network with more classes than there are folders (an ImageNet checkpoint calibrated on some
    of its classes) needs ``class_index``, the list of its classes, to know which of them each
    folder is: the sorted positions of a subset say nothing about its place in the full list.
    """
    if num_classes is not None and num_classes < len(folders):
        raise UniptsError(f"data.num_classes: {num_classes} is smaller than the {len(folders)} class folders of "
                          f"{where}; valid: null (one class per folder) or {len(folders)} or more")
    if class_index is None:
        if num_classes is None or num_classes == len(folders):
            return None, len(folders)
        raise UniptsError(f"data.class_index: needed: data.num_classes is {num_classes} but {where} holds "
                          f"{len(folders)} class folders, and which of the network's classes they are is unknown; "
                          "give a text file with one class name per line (line i = class i, e.g. ImageNet's WNIDs in "
                          "sorted order) naming the folders, or data.num_classes=null for one class per folder")
    names = read_class_index(class_index)
    if num_classes is not None and num_classes != len(names):
        raise UniptsError(f"data.class_index: {class_index} lists {len(names)} classes but data.num_classes is "
                          f"{num_classes}; line i names class i of the network, so they must agree")
    index = {name: i for i, name in enumerate(names) if name}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise UniptsError(f"data.class_index: {len(unknown)} class folder(s) of {where} are not in {class_index}: "
                          f"{_preview(unknown)}; name each folder as one of its {len(names)} classes")
    return {f: index[f] for f in folders}, len(names)


def _load_folder(root: Path, skip_bad: bool = False, skipped: list[str] | None = None):
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    samples = _readable_samples(folder.samples, skip_bad, skipped if skipped is not None else [])
    images = np.stack([np.asarray(read_image(p)) for p, _ in samples])
    labels = torch.tensor([t for _, t in samples])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, folder.classes


def _decoded_splits(root: Path, archive: Path | None, skip_bad: bool, skipped: list[str]) -> list:
    """``[(images, labels)]`` of ``root``'s train/ and test/ folders. Unpacked from an archive,
    they are also kept decoded (uint8, one file beside the unpacked tree, named after the
    archive's size and time, so a changed archive is decoded afresh): the next run reads one
    file instead of decoding every JPEG again (60,000 for CIFAR-10, some 20 s)."""
    def decode() -> list:
        return [_load_folder(root / split, skip_bad, skipped)[:2] for split in ("train", "test")]

    if archive is None:  # a folder of the user's: it may change between runs
        return decode()
    from ..atomic import save_torch_atomic

    stat = archive.stat()
    cache = root.parent / f"{root.name}.decoded-{stat.st_size}-{stat.st_mtime_ns}{'-skip_bad' if skip_bad else ''}.pt"
    if cache.is_file():
        try:
            kept = torch.load(cache, weights_only=True)
            skipped.extend(kept["skipped"])
            return kept["splits"]
        except Exception as exc:  # noqa: BLE001 - a damaged cache is decoded again, not fatal
            log.warning("data: cannot read %s (%s); decoding the images again", cache, exc)
    splits = decode()
    save_torch_atomic({"splits": splits, "skipped": list(skipped)}, cache)
    return splits


def cifar10(root: str | None, data_dir: str | Path, download: bool = False, augment: bool = True,
            skip_bad_images: bool = False, num_classes: int | None = 10) -> Splits:
    """CIFAR-10 from a JPEG archive, its unpacked ``train/ test/`` ImageFolder tree, or
    torchvision's ``cifar-10-batches-py`` files; all of it held in memory as uint8."""
    _fixed_classes(num_classes, 10, "cifar10")
    if root is None:
        raise UniptsError(
            "data.root: not set; give the CIFAR-10 JPEG archive (e.g. ../shared/data/cifar10-jpeg.tar.gz), "
            "its unpacked folder, or torchvision's folder (set UNIPTS_CIFAR10 or data.root=PATH)"
        )
    path = Path(root).expanduser()
    if not path.exists() and not download:
        raise UniptsError(f"data.root: no such file or folder: {path} (set data.download=true to fetch CIFAR-10 there)")
    skipped: list[str] = []
    archive = None
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise UniptsError(f"data.root: {path} is a file but not a tar archive")
        archive, path = path, _extract_archive(path, Path(data_dir))
    if (path / "train").is_dir() and (path / "test").is_dir():
        check_same_classes(path / "train", path / "test")
        (x_train, y_train), (x_test, y_test) = _decoded_splits(path, archive, skip_bad_images, skipped)
    else:
        from torchvision.datasets import CIFAR10

        try:
            train, test = (CIFAR10(str(path), train=t, download=download) for t in (True, False))
        except RuntimeError as exc:
            raise UniptsError(
                f"data.root: {path} holds neither train/ and test/ image folders nor torchvision's CIFAR-10 files"
            ) from exc
        x_train, y_train = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(train.targets)
        x_test, y_test = torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(test.targets)
    train_set = TensorImages(x_train, y_train, CIFAR10_MEAN, CIFAR10_STD)
    return Splits(
        train=train_set, train_plain=train_set,
        eval=TensorImages(x_test, y_test, CIFAR10_MEAN, CIFAR10_STD),
        train_labels=y_train, num_classes=10, in_channels=3,
        batch_augment=BatchAugment(pad=4, flip=True) if augment else None, skipped_images=skipped,
    )


def _image_folder(root: Path, transform, skip_bad: bool, skipped: list[str], labels: dict[str, int] | None = None):
    """torchvision's ImageFolder whose loader names an unreadable file, its images labelled by
    ``labels`` (folder name -> class index; None: sorted positions); with ``skip_bad`` the files
    that do not open are left out up front."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root), transform=transform, loader=read_image)
    samples = folder.samples
    if labels is not None:
        folder.class_to_idx = dict(labels)
        samples = [(path, labels[folder.classes[t]]) for path, t in samples]
    if skip_bad:
        samples = _readable_samples(samples, True, skipped)
    folder.samples = folder.imgs = samples
    folder.targets = [t for _, t in samples]
    return folder


def imagefolder(root: str | None, train_dir: str = "train", eval_dir: str = "val", image_size: int = 224,
                resize: int = 256, augment: bool = True, skip_bad_images: bool = False,
                num_classes: int | None = None, class_index: str | Path | None = None) -> Splits:
    """Any ``root/train/<class>/*`` and ``root/val/<class>/*`` tree (ImageNet's layout). Its
    images are labelled with the network's class indices (:func:`class_labels`): one class per
    folder, or with ``class_index`` the folders' places among the network's ``num_classes``."""
    from torchvision import transforms as T

    if root is None:
        raise UniptsError("data.root: not set; give a folder with train/ and val/ ImageFolder trees")
    base = Path(root).expanduser()
    for sub in (train_dir, eval_dir):
        if not (base / sub).is_dir():
            raise UniptsError(f"data.root: {base / sub} is not a folder (expected {train_dir}/ and {eval_dir}/ class folders)")
    folders = check_same_classes(base / train_dir, base / eval_dir)
    labels, classes = class_labels(folders, base / train_dir, num_classes, class_index)
    if labels is not None:
        log.info("data: %d class folders labelled as classes of a %d-class network (data.class_index=%s)",
                 len(folders), classes, class_index)
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    plain = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), norm])
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if augment else plain
    skipped: list[str] = []
    train = _image_folder(base / train_dir, train_tf, skip_bad_images, skipped, labels)
    train_plain = _image_folder(base / train_dir, plain, False, [], labels)
    train_plain.samples = train_plain.imgs = train.samples
    train_plain.targets = train.targets
    return Splits(
        train=train, train_plain=train_plain,
        eval=_image_folder(base / eval_dir, plain, skip_bad_images, skipped, labels),
        train_labels=torch.tensor(train.targets), num_classes=classes, in_channels=3,
        batch_augment=None, skipped_images=skipped,
    )
