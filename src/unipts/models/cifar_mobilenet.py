"""MobileNetV2 for 32x32 images: torchvision's network with two down-samplings fewer.

At 224 px MobileNetV2 (Sandler et al., 2018) reduces its input 32-fold; a 32x32 image would reach
the last blocks as a single pixel. The CIFAR variant people train keeps the stem convolution and
the first 24-channel stage at stride 1, so the network reduces 8-fold and its last blocks see
4x4 maps. Everything else (expansion 6, the inverted-residual table, ``width_mult``, dropout) is
torchvision's, so its layer names and export paths are the ones users of the ImageNet model know.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import MobileNetV2

from ..common import UniptsError

# torchvision's table (expansion t, channels c, repeats n, stride s) with the second row at stride 1.
CIFAR_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def cifar_mobilenet_v2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                       dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 with stride 1 in its stem and its first 24-channel stage (see the module's note)."""
    if in_channels != 3:
        raise UniptsError(f"model: mobilenet_v2_cifar takes 3 input channels, the data has {in_channels}")
    if not 0 < width_mult <= 4:
        raise UniptsError(f"model.width_mult: {width_mult} is out of range; valid: (0, 4]")
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=CIFAR_SETTING,
                        dropout=dropout)
    model.features[0][0].stride = (1, 1)  # the stem; torchvision fixes it at 2
    return model
