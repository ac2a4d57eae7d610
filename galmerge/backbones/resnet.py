"""ResNet-18 (torchvision, random initialisation) adapted to small multi-band galaxy stamps.

The ImageNet stem (7×7 stride-2 conv + max-pool) shrinks a 75×75 stamp to 19×19 before the first
residual block and leaves a 3×3 map for layer4; tidal features a few pixels wide are averaged
away that early. The default ``stem="small"`` uses a 3×3 stride-1 conv instead and keeps the
max-pool: layer1 then sees 38×38 and layer4 5×5 (close to ImageNet's 7×7 at 224 pixels), at about
a quarter of the cost of also dropping the max-pool. ``stem="imagenet"`` keeps torchvision's
original stem, which is what the DeepMerge II code (``network.ResNetFc``) trained.

``bottleneck=b > 0`` adds Linear(512, b) + BatchNorm + ReLU (+ dropout) as the DA feature layer,
the usual DANN/CDAN bottleneck; DeepMerge II used b = 256 with a plain Linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from galmerge.errors import GalmergeError

STEMS = ("small", "imagenet")


class ResNetFeatures(nn.Module):
    """Images (N, C, H, W) -> pooled ResNet-18 features (N, 512) or bottleneck features (N, b)."""

    # DeepMerge II's ResNetFc trains the bottleneck and the classifier at 10x the learning rate
    lr_multipliers = {"bottleneck": 10.0}
    head_lr_multiplier = 10.0

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 75,
        bottleneck: int = 0,
        dropout: float = 0.0,
        stem: str = "small",
    ) -> None:
        super().__init__()
        from torchvision.models import resnet18

        if stem not in STEMS:
            raise GalmergeError(f"unknown resnet18 stem '{stem}'; choose one of {', '.join(STEMS)}")
        if bottleneck < 0:
            raise GalmergeError(f"resnet18 bottleneck must be >= 0 (0 = none), got {bottleneck}")
        net = resnet18(weights=None)  # never download weights: random initialisation
        if stem == "small":
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.fc = nn.Identity()
        self.body = net
        width = 512
        if bottleneck:
            layers: list[nn.Module] = [
                nn.Linear(width, bottleneck),
                nn.BatchNorm1d(bottleneck),
                nn.ReLU(inplace=True),
            ]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            self.bottleneck: nn.Module = nn.Sequential(*layers)
            width = bottleneck
        else:
            self.bottleneck = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.body(x))
