"""Data handed over from Python (:func:`unipts.prune`): a ``Dataset``, a ``DataLoader``, a tensor of
images or ``(images, labels)``, made into the :class:`~unipts.data.Splits` the pipeline reads.

Images are used as the caller's data set gives them (its own transforms, normalisation included);
nothing is augmented on top. Labels are optional for calibration (an unlabeled image carries
:data:`UNLABELED`) and required for evaluation, where they give top-1.
"""

from __future__ import annotations

from typing import NoReturn

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from ..common import UniptsError
from .datasets import UNLABELED, Splits

WHAT_IS_VALID = "a Dataset, a DataLoader over one, a tensor of images (N, C, H, W) or a pair (images, labels)"


def from_python(**_options) -> NoReturn:
    """``data=given``'s factory: the images of such a run came from Python, a command has none."""
    raise UniptsError("data=given: the images of this run were handed over from Python (unipts.prune); on the "
                      "command line choose a data set: data=<digits|cifar10|imagefolder> or a data._target_")


class LabelledPairs(Dataset):
    """A caller's data set whose items are ``(image, label)`` or a bare image: always
    ``(image, label)``, the label :data:`UNLABELED` where there is none."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return image_and_label(self.data[i])


def image_and_label(item) -> tuple[torch.Tensor, int]:
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], int(item[1])
    return (item[0] if isinstance(item, (tuple, list)) else item), UNLABELED


def as_dataset(data, key: str) -> Dataset:
    """The map-style data set behind ``data`` (``key`` names the argument in a refusal)."""
    if isinstance(data, DataLoader):
        data = data.dataset  # its batching is the run's (data.batch_size); its items are what counts
    if isinstance(data, torch.Tensor):
        data = TensorDataset(data, torch.full((len(data),), UNLABELED, dtype=torch.long))
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        images, labels = data
        if len(images) != len(labels):
            raise UniptsError(f"{key}: {len(images)} images but {len(labels)} labels")
        data = TensorDataset(images, labels.long())
    if isinstance(data, IterableDataset) or not isinstance(data, Dataset) or not hasattr(data, "__len__"):
        raise UniptsError(f"{key}: a {type(data).__name__} cannot be read image by image; valid: {WHAT_IS_VALID} "
                          "(an IterableDataset has no length or index)")
    if len(data) == 0:
        raise UniptsError(f"{key}: holds no images")
    return LabelledPairs(data)


def labels_of(data: LabelledPairs) -> torch.Tensor:
    """Every item's label: from the data set's ``targets`` or labels tensor where it has one,
    else read item by item (which loads each image once)."""
    inner = data.data
    if isinstance(inner, TensorDataset) and len(inner.tensors) >= 2:
        return inner.tensors[1].long()
    targets = getattr(inner, "targets", None)
    if targets is not None and len(targets) == len(inner):
        return torch.as_tensor(targets, dtype=torch.long)
    return torch.tensor([data[i][1] for i in range(len(data))], dtype=torch.long)


def first_image(data: Dataset, key: str) -> torch.Tensor:
    """The first image, checked to be what a network takes: a floating-point ``C x H x W`` tensor."""
    image = data[0][0]
    if not isinstance(image, torch.Tensor):
        raise UniptsError(f"{key}: items are {type(image).__name__}, not tensors; give the data set a transform "
                          "ending in ToTensor() (and its normalisation)")
    if image.dim() != 3 or not image.is_floating_point():
        raise UniptsError(f"{key}: an image is a {image.dtype} tensor of shape {tuple(image.shape)}; valid: "
                          "floating point, (channels, height, width)")
    return image


def given_splits(calibration, evaluation=None, *, num_classes: int) -> Splits:
    """The caller's calibration images (the pool the calibration subset is drawn from) and
    evaluation images as splits for a network of ``num_classes`` outputs."""
    train = as_dataset(calibration, "calibration")
    channels = first_image(train, "calibration").shape[0]
    labels = _checked_labels(labels_of(train), num_classes, "calibration")
    eval_set = None
    if evaluation is not None:
        eval_set = as_dataset(evaluation, "evaluation")
        eval_channels = first_image(eval_set, "evaluation").shape[0]
        if eval_channels != channels:
            raise UniptsError(f"evaluation: its images have {eval_channels} channels, the calibration images {channels}")
        eval_labels = _checked_labels(labels_of(eval_set), num_classes, "evaluation")
        if bool((eval_labels == UNLABELED).any()):
            raise UniptsError("evaluation: every image needs its label (top-1 is measured on them)")
    return Splits(train=train, train_plain=train, eval=eval_set, train_labels=labels, num_classes=num_classes,
                  in_channels=channels, batch_augment=None)


def _checked_labels(labels: torch.Tensor, num_classes: int, key: str) -> torch.Tensor:
    labelled = labels[labels != UNLABELED]
    if len(labelled) and (int(labelled.min()) < 0 or int(labelled.max()) >= num_classes):
        raise UniptsError(f"{key}: labels span [{int(labelled.min())}, {int(labelled.max())}] but the network has "
                          f"{num_classes} outputs; valid labels: 0..{num_classes - 1}")
    return labels
