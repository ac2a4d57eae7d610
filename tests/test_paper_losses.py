"""DeepMerge II fidelity of the loss options: constant GRL, Fisher defaults (issue 13)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from galmerge.errors import GalmergeError
from galmerge.plugin.strategy_api import StepInputs, StrategyContext


def _build(plugin_manager, name: str, dim: int = 16, **options):
    record = plugin_manager.get("strategies", name)
    context = StrategyContext(
        feature_dim=dim, num_classes=2, total_steps=100, device=torch.device("cpu")
    )
    return record.build(context, {**record.defaults, **options})


def _step(source: torch.Tensor, target: torch.Tensor, progress: float) -> StepInputs:
    n, m = source.shape[0], target.shape[0]
    return StepInputs(
        source_features=source,
        source_logits=torch.zeros(n, 2),
        source_labels=torch.arange(n) % 2,
        target_features=target,
        target_logits=torch.zeros(m, 2),
        progress=progress,
    )


def test_constant_grl_reverses_the_full_gradient_from_the_first_step(plugin_manager) -> None:
    """grl="constant" is the DeepMerge II code's AdversarialLayer: backward = -1 * grad."""
    torch.manual_seed(0)
    module = _build(plugin_manager, "dann", dropout=0.0, grl="constant")
    source, target = torch.randn(8, 16), torch.randn(8, 16) + 1
    both = torch.cat([source, target]).requires_grad_()
    domain = torch.cat([torch.ones(8), torch.zeros(8)])
    plain = F.binary_cross_entropy_with_logits(module.discriminator(both), domain)
    (direct,) = torch.autograd.grad(plain, both)
    for progress in (0.0, 0.1, 1.0):
        s, t = source.clone().requires_grad_(), target.clone().requires_grad_()
        terms = module(_step(s, t, progress))
        terms["dann"].backward()
        assert terms["_grl_coeff"].item() == 1.0
        torch.testing.assert_close(torch.cat([s.grad, t.grad]), -direct)
    # the default ramp gives no adversarial gradient at the start
    ramp = _build(plugin_manager, "dann", dropout=0.0)
    assert ramp(_step(source, target, 0.0))["_grl_coeff"].item() == 0.0


def test_grl_option_is_checked(plugin_manager) -> None:
    with pytest.raises(GalmergeError, match="grl must be one of ramp, constant"):
        _build(plugin_manager, "dann", grl="linear")


def test_fisher_default_weights_are_the_papers_command_lines(plugin_manager) -> None:
    """intra 0.01 / inter 1.0 (every Fisher command line of the DeepMerge II repository): the
    trace ratio is 1/100 of the unscaled intra/inter."""
    record = plugin_manager.get("strategies", "fisher")
    assert (record.defaults["intra_weight"], record.defaults["inter_weight"]) == (0.01, 1.0)
    # the paper's sum over the batch and no ramp (galmerge's defaults: mean and warmup 10)
    module = _build(plugin_manager, "fisher", reduction="sum", warmup=0.0)
    torch.manual_seed(1)
    terms = module(_step(torch.randn(8, 16), torch.randn(8, 16), 0.5))
    ratio = terms["_fisher_intra"] / terms["_fisher_inter"]
    torch.testing.assert_close(terms["fisher"].detach(), 0.01 * ratio)


def test_resnet18_as_deepmerge2_builds_it() -> None:
    """bottleneck_layer="linear": a plain Linear(512, 256) bottleneck (N(0, 0.005), zero bias),
    a Linear head N(0, 0.01), the ImageNet stem, and x10 multipliers declared for both."""
    from torch import nn

    from galmerge.models.model import build_model

    torch.manual_seed(0)
    model = build_model(
        "resnet18", 3, 75, 2,
        {"bottleneck": 256, "bottleneck_layer": "linear", "stem": "imagenet", "lr_mult": 10.0},
    )
    bottleneck = model.backbone.bottleneck
    assert [type(m) for m in bottleneck] == [nn.Linear]
    assert bottleneck[0].weight.shape == (256, 512)
    assert bottleneck[0].weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.15)
    assert not bottleneck[0].bias.any() and not model.head.bias.any()
    assert model.backbone.body.conv1.kernel_size == (7, 7)
    assert model.backbone.lr_multipliers == {"bottleneck": 10.0}
    assert model.backbone.head_lr_multiplier == 10.0
    model.eval()
    features, logits = model(torch.randn(4, 3, 75, 75))
    assert features.shape == (4, 256) and logits.shape == (4, 2)
    assert (features < 0).any()  # no ReLU after the bottleneck
    # the default layout is unchanged (BatchNorm + ReLU); the x10 is DeepMerge II's default too
    default = build_model("resnet18", 3, 75, 2, {"bottleneck": 256})
    assert any(isinstance(m, nn.BatchNorm1d) for m in default.backbone.bottleneck)
    assert default.backbone.lr_multipliers == {"bottleneck": 10.0}
    plain = build_model("resnet18", 3, 75, 2, {"lr_mult": 1.0})
    assert plain.backbone.head_lr_multiplier == 1.0


def test_resnet18_bottleneck_layer_is_checked() -> None:
    from galmerge.models.model import build_model

    with pytest.raises(GalmergeError, match="bottleneck_layer 'plain'"):
        build_model("resnet18", 3, 75, 2, {"bottleneck": 8, "bottleneck_layer": "plain"})
