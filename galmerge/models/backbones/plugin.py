"""Built-in backbones: the DeepMerge CNN and an adapted ResNet-18 (torch imported lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from galmerge.errors import GalmergeError
from galmerge.plugin.hookspecs import hookimpl
from galmerge.plugin.records import Backbone

if TYPE_CHECKING:
    from torch import nn


def _number(backbone: str, key: str, value: Any, kind: type) -> Any:
    """Options may arrive from the CLI or TOML as strings; coerce or fail in one line."""
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise GalmergeError(
            f"option '{key}' of backbone '{backbone}' must be {kind.__name__}, got {value!r}"
        ) from None


def _build_deepmerge(in_channels: int, image_size: int, dropout: float = 0.1) -> nn.Module:
    from galmerge.models.backbones.deepmerge import DeepMergeFeatures

    dropout = _number("deepmerge", "dropout", dropout, float)
    if not 0.0 <= dropout < 1.0:
        raise GalmergeError(f"deepmerge dropout must be in [0, 1), got {dropout}")
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

    bottleneck = _number("resnet18", "bottleneck", bottleneck, int)
    dropout = _number("resnet18", "dropout", dropout, float)
    lr_mult = _number("resnet18", "lr_mult", lr_mult, float)
    if not 0.0 <= dropout < 1.0:
        raise GalmergeError(f"resnet18 dropout must be in [0, 1), got {dropout}")
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
            defaults={"dropout": 0.1},
            search_space={"dropout": {"type": "float", "low": 0.0, "high": 0.5}},
        ),
        Backbone(
            name="resnet18",
            description="torchvision ResNet-18, random init, 3x3 stem for 75x75 stamps; "
            "optional bottleneck",
            build=_build_resnet18,
            defaults={"bottleneck": 0, "dropout": 0.0, "stem": "small",
                      "bottleneck_layer": "bn-relu", "lr_mult": 10.0},
            search_space={"dropout": {"type": "float", "low": 0.0, "high": 0.5}},
        ),
    ]
