"""Built-in backbones: the DeepMerge CNN and an adapted ResNet-18 (torch imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.options import Option
from galmerge.plugin.records import Backbone

if TYPE_CHECKING:
    from torch import nn


def _build_deepmerge(in_channels: int, image_size: int, dropout: float = 0.1) -> nn.Module:
    from galmerge.models.backbones.deepmerge import DeepMergeFeatures

    return DeepMergeFeatures(in_channels, image_size, dropout=dropout)


def _deepmerge_head(in_features: int, num_classes: int) -> nn.Module:
    from galmerge.models.backbones.deepmerge import build_head

    return build_head(in_features, num_classes)


def _build_resnet18(
    in_channels: int,
    image_size: int,
    bottleneck: int = 0,
    dropout: float = 0.0,
    stem: str = "small",
    bottleneck_layer: str = "bn-relu",
    lr_mult: float = 10.0,
) -> nn.Module:
    from galmerge.models.backbones.resnet import ResNetFeatures

    return ResNetFeatures(
        in_channels, image_size, bottleneck=bottleneck, dropout=dropout, stem=str(stem),
        bottleneck_layer=str(bottleneck_layer), lr_mult=lr_mult,
    )


@hookimpl
def register_backbones() -> list[Backbone]:
    return [
        Backbone(
            name="deepmerge",
            description="DeepMerge II CNN: 3 conv blocks (2592 features at 75x75) + 64-32-2 head",
            build=_build_deepmerge,
            build_head=_deepmerge_head,
            # The final DeepMerge II code has no dropout (its June 2020 drafts and DeepMerge I had
            # 0.5 after every block; the deepmerge2-* presets set 0). 0.5 before the next
            # BatchNorm shifts its statistics between train and eval mode: on the synthetic pair
            # eval accuracy fell to chance, so the default is a mild 0.1.
            options={"dropout": Option(0.1, "dropout after each convolution block", min=0.0,
                                       below=1.0)},
            search_space={"dropout": {"type": "float", "low": 0.0, "high": 0.5}},
        ),
        Backbone(
            name="resnet18",
            description="torchvision ResNet-18, random init, 3x3 stem for 75x75 stamps; "
            "optional bottleneck",
            build=_build_resnet18,
            # choices: galmerge.models.backbones.resnet STEMS and BOTTLENECK_LAYERS (not imported: torch)
            options={
                "bottleneck": Option(0, "width b of a DA feature layer Linear(512, b) (0: none)",
                                     min=0),
                "dropout": Option(0.0, "dropout in the bottleneck", min=0.0, below=1.0),
                "stem": Option("small", "3x3 stride-1 stem for small stamps, or torchvision's 7x7 "
                               "stride-2 one (DeepMerge II's)",
                               choices=("small", "imagenet")),
                "bottleneck_layer": Option("bn-relu", "BatchNorm + ReLU after the bottleneck, or "
                                           "DeepMerge II's plain Linear",
                                           choices=("bn-relu", "linear")),
                "lr_mult": Option(10.0, "learning-rate factor of the bottleneck and the head",
                                  min=0.0, max=1e4),
            },
            search_space={"dropout": {"type": "float", "low": 0.0, "high": 0.5}},
        ),
    ]
