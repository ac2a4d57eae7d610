"""The DeepMerge CNN (Ćiprijanović et al. 2020, 2021): three conv blocks, then a 3-layer MLP head.

Layer by layer as in DeepMerge II (arXiv:2103.01373, and ``network.DeepMerge`` in
github.com/AleksCipri/DeepMergeDomainAdaptation): conv 3→8 5×5 pad 2, BN, ReLU, maxpool 2 →
conv 8→16 3×3 pad 1, BN, ReLU, maxpool 2 → conv 16→32 3×3 pad 1, BN, ReLU, maxpool 2 → flatten
(32·9·9 = 2592 for 75×75, the features used for DA) → FC 64, ReLU → FC 32, ReLU → FC 2.
The final version of that code has no dropout; its June 2020 drafts and DeepMerge I (Keras)
applied Dropout(0.5) after every conv block's max-pool. Here the ``dropout`` option does that
(default 0.1, see galmerge/models/backbones/plugin.py; the deepmerge2-* presets set 0, as the paper's
final code).
"""

from __future__ import annotations

import torch
from torch import nn

from galmerge.errors import GalmergeError

CHANNELS = (8, 16, 32)
KERNELS = (5, 3, 3)


def pooled_size(image_size: int) -> int:
    """Side length after the three 'same' convolutions and 2×2 max-pools (75 -> 37 -> 18 -> 9)."""
    size = int(image_size)
    for _ in CHANNELS:
        size //= 2
    return size


class DeepMergeFeatures(nn.Module):
    """Images (N, C, H, W) -> flattened conv features (N, 32 · H/8 · W/8)."""

    def __init__(self, in_channels: int = 3, image_size: int = 75, dropout: float = 0.5) -> None:
        super().__init__()
        side = pooled_size(image_size)
        if side < 1:
            raise GalmergeError(
                f"image size {image_size} is too small for the deepmerge backbone; use at least 8"
            )
        layers: list[nn.Module] = []
        prev = int(in_channels)
        for out, k in zip(CHANNELS, KERNELS, strict=True):
            layers += [
                nn.Conv2d(prev, out, kernel_size=k, stride=1, padding=k // 2),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = out
        self.layers = nn.Sequential(*layers)
        # Grad-CAM reads the last convolution's activation (after its BatchNorm and ReLU)
        last_relu = max(i for i, m in enumerate(layers) if isinstance(m, nn.ReLU))
        self.cam_layer = f"layers.{last_relu}"
        self.out_features = CHANNELS[-1] * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.layers(x), 1)


def build_head(in_features: int, num_classes: int) -> nn.Module:
    """The paper's classifier: FC 64, ReLU, FC 32, ReLU, FC ``num_classes`` (no dropout there)."""
    return nn.Sequential(
        nn.Linear(in_features, 64),
        nn.ReLU(inplace=True),
        nn.Linear(64, 32),
        nn.ReLU(inplace=True),
        nn.Linear(32, num_classes),
    )
