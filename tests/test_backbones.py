"""Built-in backbones through the plugin manager and build_model: shapes, sizes, options."""

from __future__ import annotations

import pytest
import torch

from galmerge.errors import GalmergeError
from galmerge.models.model import build_model


def _deepmerge_paper_parameter_count(channels: int = 3, classes: int = 2) -> int:
    """Counted layer by layer from the architecture in DeepMerge II (conv, BN, FC)."""
    conv = (channels * 8 * 5 * 5 + 8) + (8 * 16 * 3 * 3 + 16) + (16 * 32 * 3 * 3 + 32)
    bn = 2 * (8 + 16 + 32)
    fc = (32 * 9 * 9 * 64 + 64) + (64 * 32 + 32) + (32 * classes + classes)
    return conv + bn + fc


@pytest.mark.parametrize("backbone", ["deepmerge", "resnet18"])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_forward_shapes(backbone: str, channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(backbone, channels, 75).eval()
    with torch.no_grad():
        features, logits = model(torch.randn(2, channels, 75, 75))
    assert features.shape == (2, model.out_features)
    assert logits.shape == (2, 2)
    assert torch.isfinite(features).all() and torch.isfinite(logits).all()


def test_deepmerge_matches_the_paper() -> None:
    model = build_model("deepmerge", 3, 75)
    assert model.out_features == 32 * 9 * 9 == 2592
    assert sum(p.numel() for p in model.parameters()) == _deepmerge_paper_parameter_count()
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 8, (5, 5), (2, 2)),
        (8, 16, (3, 3), (1, 1)),
        (16, 32, (3, 3), (1, 1)),
    ]
    head = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(h.in_features, h.out_features) for h in head] == [(2592, 64), (64, 32), (32, 2)]


@pytest.mark.parametrize("size", [64, 100])
def test_deepmerge_other_image_sizes(size: int) -> None:
    model = build_model("deepmerge", 4, size).eval()
    side = size // 2 // 2 // 2
    assert model.out_features == 32 * side * side
    with torch.no_grad():
        features, logits = model(torch.randn(3, 4, size, size))
    assert features.shape == (3, 32 * side * side) and logits.shape == (3, 2)


def test_deepmerge_dropout_option_is_used() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 75, 75)
    plain = build_model("deepmerge", 3, 75, options={"dropout": 0.0}).train()
    assert torch.equal(plain.backbone(x), plain.backbone(x))  # deterministic without dropout
    noisy = build_model("deepmerge", 3, 75).train()  # default 0.1
    assert not torch.equal(noisy.backbone(x), noisy.backbone(x))


def test_resnet18_bottleneck_and_stems() -> None:
    model = build_model("resnet18", 3, 75, options={"bottleneck": 32, "dropout": 0.1})
    assert model.out_features == 32
    model.train()
    features, logits = model(torch.randn(4, 3, 75, 75))
    assert features.shape == (4, 32) and logits.shape == (4, 2)
    assert build_model("resnet18", 3, 75).out_features == 512
    small = build_model("resnet18", 5, 75).backbone.body.conv1
    assert (small.in_channels, small.kernel_size, small.stride) == (5, (3, 3), (1, 1))
    imagenet = build_model("resnet18", 5, 75, options={"stem": "imagenet"}).backbone.body.conv1
    assert (imagenet.in_channels, imagenet.kernel_size, imagenet.stride) == (5, (7, 7), (2, 2))


def test_gradients_reach_the_first_layer() -> None:
    for name in ("deepmerge", "resnet18"):
        model = build_model(name, 2, 75).train()
        _, logits = model(torch.randn(4, 2, 75, 75))
        logits.sum().backward()
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("backbone", "options", "message"),
    [
        ("deepmerge", {"dropuot": 0.1}, "unknown option"),
        ("deepmerge", {"dropout": 1.5}, "dropout"),
        ("resnet18", {"stem": "huge"}, "stem"),
        ("resnet18", {"bottleneck": "wide"}, "bottleneck"),
        ("resnet18", {"bottleneck": -3}, "bottleneck"),
    ],
)
def test_bad_options_are_one_line_errors(backbone: str, options: dict, message: str) -> None:
    with pytest.raises(GalmergeError, match=message) as info:
        build_model(backbone, 3, 75, options=options)
    assert "\n" not in str(info.value)


def test_tiny_images_are_refused_by_deepmerge() -> None:
    with pytest.raises(GalmergeError, match="too small"):
        build_model("deepmerge", 3, 6)


def test_builtin_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, galmerge.models.backbones.plugin, galmerge.losses.plugin; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
