"""ResNet-18 (torchvision, random initialisation) adapted to small multi-band galaxy stamps.

The ImageNet stem (7×7 stride-2 conv + max-pool) shrinks a 75×75 stamp to 19×19 before the first
residual block and leaves a 3×3 map for layer4; tidal features a few pixels wide are averaged
away that early. The default ``stem="small"`` uses a 3×3 stride-1 conv instead and keeps the
max-pool: layer1 then sees 38×38 and layer4 5×5 (close to ImageNet's 7×7 at 224 pixels), at about
a quarter of the cost of also dropping the max-pool. ``stem="imagenet"`` keeps torchvision's
original stem, which is what the DeepMerge II code (``network.ResNetFc``) trained.

``bottleneck=b > 0`` adds a DA feature layer Linear(512, b). ``bottleneck_layer="bn-relu"``
(default) follows it with BatchNorm + ReLU (+ dropout), the usual DANN/CDAN bottleneck.
``bottleneck_layer="linear"`` is DeepMerge II's (``network.ResNetFc``, b = 256): the plain Linear
layer, weights N(0, 0.005) and zero bias, and a Linear head with weights N(0, 0.01) and zero bias;
the features are the bottleneck's raw output.

``lr_mult`` (default 10, DeepMerge II's: ``train_MMD.py``, ``train_ADA.py``,
``no_domain_adaptation.py`` train the bottleneck and the classifier at 10× the base learning rate)
is declared for the trainer in the module attributes ``lr_multipliers`` (``bottleneck``, when there
is one) and ``head_lr_multiplier`` (the classifier head); ``--set
lr_multipliers.model.backbone.bottleneck=X`` / ``lr_multipliers.model.head=X`` override them.
"""

from __future__ import annotations

import torch
from torch import nn

from galmerge.errors import GalmergeError

STEMS = ("small", "imagenet")
BOTTLENECK_LAYERS = ("bn-relu", "linear")


class ResNetFeatures(nn.Module):
    """Images (N, C, H, W) -> pooled ResNet-18 features (N, 512) or bottleneck features (N, b)."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 75,
        bottleneck: int = 0,
        dropout: float = 0.0,
        stem: str = "small",
        bottleneck_layer: str = "bn-relu",
        lr_mult: float = 10.0,
    ) -> None:
        super().__init__()
        from torchvision.models import resnet18

        if stem not in STEMS:
            raise GalmergeError(f"unknown resnet18 stem '{stem}'; choose one of {', '.join(STEMS)}")
        if bottleneck_layer not in BOTTLENECK_LAYERS:
            raise GalmergeError(
                f"unknown resnet18 bottleneck_layer '{bottleneck_layer}'; choose one of "
                f"{', '.join(BOTTLENECK_LAYERS)}"
            )
        if not lr_mult > 0:
            raise GalmergeError(f"resnet18 lr_mult must be > 0, got {lr_mult}")
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
        self.cam_layer = "body.layer4"  # Grad-CAM's usual ResNet layer: the last block's output
        width = 512
        self.paper_init = bottleneck_layer == "linear"
        if bottleneck and self.paper_init:
            linear = nn.Linear(width, bottleneck)
            nn.init.normal_(linear.weight, 0.0, 0.005)
            nn.init.zeros_(linear.bias)
            self.bottleneck = nn.Sequential(linear, *([nn.Dropout(dropout)] if dropout > 0 else []))
            width = bottleneck
        elif bottleneck:
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
        # read by the trainer (galmerge.training.optim): DeepMerge II's ResNetFc trains the
        # bottleneck and the classifier at 10x the learning rate
        self.lr_multipliers: dict[str, float] = {"bottleneck": float(lr_mult)}
        self.head_lr_multiplier = float(lr_mult)

    def init_head(self, head: nn.Module) -> None:
        """DeepMerge II's head initialisation (weights N(0, 0.01), zero bias) with ``linear``."""
        if self.paper_init and isinstance(head, nn.Linear):
            nn.init.normal_(head.weight, 0.0, 0.01)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.body(x))
