"""Built-in DA strategies through the plugin manager: values, gradients, toy optimisation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from galmerge.errors import GalmergeError
from galmerge.plugin.strategy_api import StepInputs, StrategyContext, parse_strategy_expression

BUILTIN = ["none", "adabn", "mmd", "coral", "dann", "fisher", "entropy", "bsp"]
SIGMAS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 5, 10, 15, 20, 25, 30, 35, 100, 1e3, 1e4, 1e5, 1e6]


def _context(dim: int = 16, classes: int = 2) -> StrategyContext:
    return StrategyContext(
        feature_dim=dim, num_classes=classes, total_steps=100, device=torch.device("cpu")
    )


def _build(plugin_manager, name: str, dim: int = 16, **options):
    record = plugin_manager.get("strategies", name)
    return record.build(_context(dim), {**record.defaults, **options})


def _step(
    source: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor | None = None,
    source_logits: torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    progress: float = 0.5,
) -> StepInputs:
    n, m = source.shape[0], target.shape[0]
    return StepInputs(
        source_features=source,
        source_logits=source_logits if source_logits is not None else torch.zeros(n, 2),
        source_labels=labels if labels is not None else torch.arange(n) % 2,
        target_features=target,
        target_logits=target_logits if target_logits is not None else torch.zeros(m, 2),
        progress=progress,
    )


def _mmd_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The DeepMerge II formulation: a (batch × batch × features) broadcast per kernel block."""

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(dim=2)
        return sum(torch.exp(-d2 / (2.0 * s)) for s in SIGMAS)

    cost = kernel(x, x).mean() + kernel(y, y).mean() - 2.0 * kernel(x, y).mean()
    return cost.clamp_min(0.0)


def _coral_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = x.shape[1]
    return (torch.cov(x.T) - torch.cov(y.T)).pow(2).sum() / (4 * d * d)


# -- registry ---------------------------------------------------------------------------------
def test_every_builtin_strategy_is_registered_with_a_weight(plugin_manager) -> None:
    records = plugin_manager.components("strategies")
    for name in BUILTIN:
        assert name in records
        # dann's 0.3: chosen on the dev pairs with per-domain BatchNorm (stop 23)
        assert records[name].defaults["weight"] == (0.3 if name == "dann" else 1.0)
        assert records[name].description
    assert plugin_manager.get("strategies", "ada") is records["dann"]
    # `none` and `fisher` (source features and labels only) never read the target batch
    assert sorted(n for n in BUILTIN if not records[n].needs_target) == ["fisher", "none"]


@pytest.mark.parametrize("name", ["none", "adabn"])
def test_none_and_adabn_add_nothing(plugin_manager, name) -> None:
    module = _build(plugin_manager, name)
    assert module(_step(torch.randn(4, 16), torch.randn(4, 16))) == {}
    assert not list(module.parameters())


def test_builtins_declare_the_original_learning_rate_multipliers(plugin_manager) -> None:
    assert _build(plugin_manager, "fisher").lr_multipliers == {"centers": 10.0}
    assert _build(plugin_manager, "dann").lr_multipliers == {"discriminator": 0.1}


@pytest.mark.parametrize("name", ["mmd", "coral", "dann", "ada", "fisher", "entropy", "bsp"])
def test_terms_are_finite_scalars_with_gradients(plugin_manager, name: str) -> None:
    torch.manual_seed(0)
    module = _build(plugin_manager, name)
    source = torch.randn(8, 16, requires_grad=True)
    target = (torch.randn(6, 16) + 1).requires_grad_()
    target_logits = torch.randn(6, 2, requires_grad=True)
    terms = module(_step(source, target, target_logits=target_logits))
    losses = {k: v for k, v in terms.items() if not k.startswith("_")}
    assert losses, f"{name} returned no loss term"
    for key, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        if key.startswith("_"):
            assert not value.requires_grad, f"diagnostic {key} must be detached"
    sum(losses.values()).backward()
    grads = [t.grad for t in (source, target, target_logits)]
    reached = [g is not None and g.abs().sum().item() > 0 for g in grads]
    expected = {
        "mmd": [True, True, False],
        "coral": [True, True, False],
        "dann": [True, True, False],
        "ada": [True, True, False],
        "fisher": [True, False, False],
        "entropy": [False, False, True],
        "bsp": [True, True, False],
    }[name]
    assert reached == expected


@pytest.mark.parametrize("name", ["mmd", "coral", "dann", "fisher", "entropy", "bsp"])
def test_gradients_are_identical_on_every_run_with_two_threads(plugin_manager, name) -> None:
    """Same inputs, same gradients, bit for bit, with intra-op threads (DeepMerge's 2592-d
    features, batch 64: big enough for ATen's parallel paths). Fisher's centre gradient once
    went through index_put_ with atomic adds and changed from run to run."""
    torch.manual_seed(0)
    module = _build(plugin_manager, name, dim=2592)
    source, target = torch.randn(64, 2592), torch.randn(64, 2592) + 0.5
    logits = torch.randn(64, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = set()
        for _ in range(8):
            module.zero_grad()
            torch.manual_seed(1)  # the same dropout masks (dann's discriminator)
            inputs = [t.clone().requires_grad_() for t in (source, target, logits)]
            terms = module(_step(inputs[0], inputs[1], target_logits=inputs[2], progress=0.7))
            sum(v for k, v in terms.items() if not k.startswith("_")).backward()
            grads = [t.grad for t in inputs] + [p.grad for p in module.parameters()]
            seen.add(b"".join(g.numpy().tobytes() for g in grads if g is not None))
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 1, f"{name}: {len(seen)} different gradients from 8 identical steps"


def test_combined_expression_has_distinct_term_names(plugin_manager) -> None:
    names = parse_strategy_expression("mmd+dann+fisher+entropy+coral")
    seen: set[str] = set()
    step = _step(torch.randn(8, 16), torch.randn(8, 16), target_logits=torch.randn(8, 2))
    for name in names:
        keys = set(_build(plugin_manager, name)(step))
        assert not keys & seen
        seen |= keys


# -- MMD --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "m"), [(12, 12), (10, 7)])
def test_mmd_equals_the_broadcast_reference(plugin_manager, n: int, m: int) -> None:
    from galmerge.losses.mmd import gaussian_mmd

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 24, generator=gen, dtype=torch.float64).requires_grad_()
    y = (torch.randn(m, 24, generator=gen, dtype=torch.float64) * 1.5 + 0.5).requires_grad_()
    ours = gaussian_mmd(x, y)
    reference = _mmd_reference(x, y)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)
    g_ours = torch.autograd.grad(ours, (x, y))
    g_ref = torch.autograd.grad(reference, (x, y))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    # and through the registered strategy, in float32 at the paper's feature size
    module = _build(plugin_manager, "mmd", dim=2592, kernel="deepmerge", warmup=0.0)
    xs = torch.randn(n, 2592, generator=gen)
    ys = torch.randn(m, 2592, generator=gen) * 1.2
    value = module(_step(xs, ys))["mmd"]
    torch.testing.assert_close(
        value.double(), _mmd_reference(xs.double(), ys.double()), rtol=1e-5, atol=1e-6
    )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 10),
    m=st.integers(1, 10),
    d=st.integers(1, 40),
    scale=st.sampled_from([1e-3, 0.1, 1.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_mmd_matches_reference_for_any_shape_and_scale(n, m, d, scale, seed) -> None:
    from galmerge.losses.mmd import gaussian_mmd

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scale
    y = torch.randn(m, d, generator=gen, dtype=torch.float64) * scale + scale / 2
    ours = gaussian_mmd(x, y)
    torch.testing.assert_close(ours, _mmd_reference(x, y), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gaussian_mmd(y, x), ours, rtol=1e-9, atol=1e-12)  # symmetric
    perm = torch.randperm(n, generator=gen)
    torch.testing.assert_close(gaussian_mmd(x[perm], y), ours, rtol=1e-9, atol=1e-12)


def test_mmd_is_zero_for_identical_and_grows_with_shift(plugin_manager) -> None:
    module = _build(plugin_manager, "mmd")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 16, generator=gen)
    assert module(_step(x, x.clone()))["mmd"].item() == pytest.approx(0.0, abs=1e-5)
    same = module(_step(x, torch.randn(32, 16, generator=gen)))["mmd"].item()
    shifted = module(_step(x, torch.randn(32, 16, generator=gen) + 1.0))["mmd"].item()
    far = module(_step(x, torch.randn(32, 16, generator=gen) + 3.0))["mmd"].item()
    assert shifted > 3 * same
    assert far > shifted


# -- CORAL ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "m", "d"), [(10, 7, 32), (40, 30, 8)])  # Gram path, then d × d
def test_coral_equals_the_covariance_reference(plugin_manager, n: int, m: int, d: int) -> None:
    from galmerge.losses.coral import coral_loss

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).requires_grad_()
    y = (torch.randn(m, d, generator=gen, dtype=torch.float64) * 2.0).requires_grad_()
    ours, reference = coral_loss(x, y), _coral_reference(x, y)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-12)
    for a, b in zip(
        torch.autograd.grad(ours, (x, y)), torch.autograd.grad(reference, (x, y)), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    module = _build(plugin_manager, "coral", dim=d)
    value = module(_step(x.detach().float(), y.detach().float()))["coral"]
    torch.testing.assert_close(value.double(), reference.detach(), rtol=1e-4, atol=1e-9)
    assert module(_step(x.detach().float(), x.detach().float()))["coral"].item() < 1e-6


# -- toy problems: a few Adam steps on each loss ----------------------------------------------
def _optimise(module, make_step, params, steps: int, lr: float = 0.05) -> None:
    opt = torch.optim.Adam([*params, *module.parameters()], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        terms = module(make_step())
        sum(v for k, v in terms.items() if not k.startswith("_")).backward()
        opt.step()


def _clouds(dim: int = 8, n: int = 64, shift: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return torch.randn(n, dim, generator=gen), torch.randn(n, dim, generator=gen) + shift


def test_mmd_steps_align_shifted_clouds(plugin_manager) -> None:
    module = _build(plugin_manager, "mmd", dim=8)
    source, target = _clouds(n=32)
    offset = torch.zeros(8, requires_grad=True)
    before = module(_step(source, target))["mmd"].item()
    _optimise(module, lambda: _step(source, target + offset), [offset], steps=30, lr=0.15)
    after = module(_step(source, target + offset))["mmd"].item()
    assert after < 0.3 * before
    gap = (source.mean(0) - (target + offset).mean(0)).norm().item()
    assert gap < 0.5 * (source.mean(0) - target.mean(0)).norm().item()


def test_coral_steps_match_covariances(plugin_manager) -> None:
    module = _build(plugin_manager, "coral", dim=8)
    source, target = _clouds(shift=0.0)
    scale = torch.full((8,), 3.0, requires_grad=True)
    before = module(_step(source, target * scale))["coral"].item()
    _optimise(module, lambda: _step(source, target * scale), [scale], steps=60, lr=0.1)
    after = module(_step(source, target * scale))["coral"].item()
    assert after < 0.1 * before
    assert (scale.detach() - 1.0).abs().max() < 0.5


def test_dann_steps_align_shifted_clouds(plugin_manager) -> None:
    torch.manual_seed(5)
    module = _build(plugin_manager, "dann", dim=8, hidden=32, dropout=0.0)
    source, target = _clouds(shift=1.5)
    offset = torch.zeros(8, requires_grad=True)
    start_gap = (source.mean(0) - target.mean(0)).norm().item()
    # adversarial games oscillate later on; the first ~100 steps are a steady approach
    _optimise(
        module, lambda: _step(source, target + offset, progress=1.0), [offset], steps=80, lr=0.02
    )
    gap = (source.mean(0) - (target + offset).mean(0)).norm().item()
    assert gap < 0.5 * start_gap


def test_fisher_steps_tighten_class_clusters(plugin_manager) -> None:
    torch.manual_seed(6)
    module = _build(plugin_manager, "fisher", dim=8)
    gen = torch.Generator().manual_seed(6)
    labels = torch.arange(64) % 2
    raw = torch.randn(64, 8, generator=gen) + labels[:, None] * 0.5
    proj = torch.eye(8).requires_grad_()

    def ratio() -> float:
        f = (raw @ proj).detach()
        means = torch.stack([f[labels == k].mean(0) for k in (0, 1)])
        within = sum((f[labels == k] - means[k]).pow(2).sum() for k in (0, 1))
        between = (means - means.mean(0)).pow(2).sum() * 32
        return (within / between).item()

    before, loss_before = ratio(), module(_step(raw @ proj, raw, labels))["fisher"].item()
    _optimise(module, lambda: _step(raw @ proj, raw, labels), [proj], steps=80, lr=0.05)
    assert module(_step(raw @ proj, raw, labels))["fisher"].item() < 0.5 * loss_before
    assert ratio() < 0.5 * before


def test_fisher_ignores_unlabelled_samples(plugin_manager) -> None:
    module = _build(plugin_manager, "fisher")
    x = torch.randn(6, 16)
    labelled = module(_step(x[:4], x, torch.tensor([0, 1, 0, 1])))
    mixed = module(_step(torch.cat([x[:4], x[4:] * 100]), x, torch.tensor([0, 1, 0, 1, -1, -1])))
    torch.testing.assert_close(mixed["fisher"], labelled["fisher"])


def test_fisher_difference_form(plugin_manager) -> None:
    module = _build(plugin_manager, "fisher", form="td", intra_weight=1.0, inter_weight=0.5,
                     reduction="sum", warmup=0.0)
    x, labels = torch.randn(6, 16), torch.tensor([0, 1, 0, 1, 0, 1])
    terms = module(_step(x, x, labels))
    torch.testing.assert_close(
        terms["fisher"], terms["_fisher_intra"] - 0.5 * terms["_fisher_inter"]
    )


def test_entropy_steps_sharpen_predictions(plugin_manager) -> None:
    module = _build(plugin_manager, "entropy", diversity=0.0, warmup=0.0)
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(32, 2, generator=gen) * 0.1).requires_grad_()
    x = torch.randn(32, 16)
    value = module(_step(x, x, target_logits=logits))["entropy"]
    assert value.item() == pytest.approx(math.log(2), abs=0.01)
    _optimise(module, lambda: _step(x, x, target_logits=logits), [logits], steps=40, lr=0.1)
    assert module(_step(x, x, target_logits=logits))["entropy"].item() < 0.3


def test_entropy_can_include_source_predictions(plugin_manager) -> None:
    x = torch.randn(4, 16)
    sharp, flat = torch.tensor([[9.0, -9.0]] * 4), torch.zeros(4, 2)
    target_only = _build(plugin_manager, "entropy", diversity=0.0, warmup=0.0)
    both = _build(plugin_manager, "entropy", include_source="true", diversity=0.0, warmup=0.0)
    step = _step(x, x, source_logits=flat, target_logits=sharp)
    assert target_only(step)["entropy"].item() < 1e-6
    assert both(step)["entropy"].item() == pytest.approx(math.log(2) / 2, rel=1e-4)


def test_entropy_diversity_keeps_target_predictions_from_collapsing(plugin_manager) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(32, 16)
    start = torch.randn(32, 2, generator=gen) * 0.1 + torch.tensor([0.5, 0.0])  # all lean to 0
    predicted_ones = {}
    for diversity in (0.0, 1.0):
        logits = start.clone().requires_grad_()
        module = _build(plugin_manager, "entropy", diversity=diversity)
        _optimise(
            module, lambda z=logits: _step(x, x, target_logits=z), [logits], steps=80, lr=0.1
        )
        predicted_ones[diversity] = (logits.argmax(1) == 1).float().mean().item()
    assert predicted_ones[0.0] == 0.0  # plain entropy sharpens the one-class guess
    assert 0.2 < predicted_ones[1.0] < 0.8  # the diversity term spreads the predictions


# -- DANN gradient reversal -------------------------------------------------------------------
def test_grl_coefficient_ramps_with_progress() -> None:
    from galmerge.losses.dann import grl_coefficient

    values = [grl_coefficient(p) for p in (0.0, 0.1, 0.3, 0.6, 1.0)]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert grl_coefficient(1.0, gamma=10, max_coeff=0.3) == pytest.approx(0.3 * values[-1])
    assert grl_coefficient(2.0) == values[-1]  # progress past the plan is clipped


def test_dann_reverses_and_scales_the_feature_gradient(plugin_manager) -> None:
    from galmerge.losses.dann import grl_coefficient

    module = _build(plugin_manager, "ada", dim=16, dropout=0.0, gamma=5.0)
    source, target = torch.randn(8, 16), torch.randn(8, 16) + 1
    features = torch.cat([source, target]).requires_grad_()
    domain = torch.cat([torch.ones(8), torch.zeros(8)])
    plain = F.binary_cross_entropy_with_logits(module.discriminator(features), domain)
    (direct,) = torch.autograd.grad(plain, features)
    for progress in (0.0, 0.2, 1.0):
        s, t = source.clone().requires_grad_(), target.clone().requires_grad_()
        terms = module(_step(s, t, progress=progress))
        torch.testing.assert_close(terms["dann"], plain.detach())
        terms["dann"].backward()
        coeff = grl_coefficient(progress, gamma=5.0)
        assert terms["_grl_coeff"].item() == pytest.approx(coeff)
        torch.testing.assert_close(torch.cat([s.grad, t.grad]), -coeff * direct)
    # the discriminator itself receives the ordinary (unreversed) gradient
    module.zero_grad()
    module(_step(source, target, progress=1.0))["dann"].backward()
    disc_grad = module.discriminator.net[-1].weight.grad.clone()
    module.zero_grad()
    F.binary_cross_entropy_with_logits(module.discriminator(features.detach()), domain).backward()
    torch.testing.assert_close(disc_grad, module.discriminator.net[-1].weight.grad)


def _saturated_dann(plugin_manager, **options):
    """A DANN module whose discriminator tells features 50 and -50 apart with logits +-800."""
    module = _build(plugin_manager, "dann", dim=16, dropout=0.0, hidden=8, **options)
    first, middle, last = (m for m in module.discriminator.net if isinstance(m, nn.Linear))
    with torch.no_grad():
        for layer in (first, middle, last):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0], first.weight[1] = 0.1, -0.1
        middle.weight[0, 0], middle.weight[1, 1] = 1.0, 1.0
        last.weight[0, 0], last.weight[0, 1] = 10.0, -10.0
    return module


def _feature_grad(module, progress: float = 1.0):
    s = torch.full((8, 16), 50.0).requires_grad_()
    t = torch.full((8, 16), -50.0).requires_grad_()
    terms = module(_step(s, t, progress=progress))
    terms["dann"].backward()
    return terms, s.grad, t.grad


def test_dann_feature_losses_on_a_saturated_discriminator(plugin_manager) -> None:
    # the paper's reversed BCE: a confident discriminator sends no signal to the features
    _, gs, gt = _feature_grad(_saturated_dann(plugin_manager))
    assert gs.abs().sum() + gt.abs().sum() < 1e-6
    # the inverted (non-saturating) loss pushes source features towards the target side
    module = _saturated_dann(plugin_manager, feature_loss="inverted", gamma=5.0)
    terms, gs, gt = _feature_grad(module, progress=0.4)
    assert (gs > 0).all() and (gt < 0).all()  # gradient descent moves s down and t up
    coeff = terms["_grl_coeff"].item()
    assert terms["_feature_bce"].item() == pytest.approx(800.0, rel=1e-3)
    # scaled by the ramp: d(mean BCE)/d(logit) = 1/16 per sample, d(logit)/ds = 10 * 0.1 per
    # element, so the 8 x 16 source elements sum to coeff * 8
    assert gs.sum().item() == pytest.approx(coeff * 8.0, rel=1e-3)
    # the discriminator learns from its own BCE only
    disc_grads = [p.grad.clone() for p in module.discriminator.parameters()]
    module.zero_grad()
    both = torch.cat([torch.full((8, 16), 50.0), torch.full((8, 16), -50.0)])
    domain = torch.cat([torch.ones(8), torch.zeros(8)])
    F.binary_cross_entropy_with_logits(module.discriminator(both), domain).backward()
    for got, want in zip(disc_grads, module.discriminator.parameters(), strict=True):
        torch.testing.assert_close(got, want.grad)


def _trained_divergence(plugin_manager, relax: float, merger_share: float, shift: float) -> float:
    """The divergence a dann discriminator estimates after 200 steps on fixed features: a source
    of two class clusters half and half, a target of the same clusters at ``merger_share``,
    moved by ``shift`` across them. JS dual (log 4 - 2 BCE) for relax 0, the relaxed one's
    negated loss otherwise."""
    torch.manual_seed(0)
    module = _build(plugin_manager, "dann", dim=2, hidden=32, dropout=0.0, relax=relax)
    gen = torch.Generator().manual_seed(3)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    ys = torch.arange(256) % 2
    yt = (torch.rand(256, generator=gen) < merger_share).long()
    source = centres[ys] + 0.5 * torch.randn(256, 2, generator=gen)
    target = centres[yt] + 0.5 * torch.randn(256, 2, generator=gen) + torch.tensor([0.0, shift])
    step = _step(source, target, labels=ys, progress=1.0)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        module(step)["dann"].backward()
        opt.step()
    loss = module(step)["dann"].item()
    return -loss if relax > 0 else math.log(4.0) - 2.0 * loss


def test_relaxed_dann_admits_a_prior_shift_but_not_a_domain_shift(plugin_manager) -> None:
    """Wu et al. 2019: with relax = 1 a target whose merger share differs from a balanced
    source's (class clusters in place) costs nothing, a target moved off the source does; the
    plain discriminator charges the prior shift as a domain shift."""
    assert _trained_divergence(plugin_manager, 1.0, 0.05, 0.0) < 0.01
    assert _trained_divergence(plugin_manager, 1.0, 0.5, 2.0) > 0.1
    assert _trained_divergence(plugin_manager, 0.0, 0.05, 0.0) > 0.25


def test_relaxed_inverted_loss_pushes_the_target_only(plugin_manager) -> None:
    _, gs, gt = _feature_grad(_saturated_dann(plugin_manager, feature_loss="inverted", relax=1.0))
    assert gs.abs().sum() == 0 and (gt < 0).all()


def test_bsp_equals_the_svd_reference(plugin_manager) -> None:
    """The Gram-matrix eigenvalues give the paper's top squared singular values (torch.svd of
    the feature batch), and the ratio form does not depend on the features' scale."""
    from galmerge.losses.bsp import spectral_penalty

    gen = torch.Generator().manual_seed(7)
    f = torch.relu(torch.randn(32, 300, generator=gen) + 0.3)
    sv2 = torch.linalg.svdvals(f.double()).pow(2)
    for k in (1, 3):
        torch.testing.assert_close(spectral_penalty(f, k, "raw").double(), sv2[:k].sum(),
                                   rtol=1e-5, atol=0)
        torch.testing.assert_close(spectral_penalty(f, k, "ratio").double(),
                                   sv2[:k].sum() / sv2.sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(spectral_penalty(f * 1e3), spectral_penalty(f))
    assert spectral_penalty(torch.zeros(8, 5)).item() == 0.0
    for bad in (math.nan, math.inf):  # NaN for the trainer's guard, not a LinAlgError
        g = f.clone()
        g[3, 7] = bad
        for form in ("raw", "ratio"):
            assert math.isnan(spectral_penalty(g, 1, form).item())
    module = _build(plugin_manager, "bsp", dim=300, k=1)
    value = module(_step(f, f * 2.0, progress=1.0))["bsp"]
    torch.testing.assert_close(value, 2.0 * spectral_penalty(f))


def test_bsp_steps_spread_the_feature_energy(plugin_manager) -> None:
    """Minimising the term moves energy out of the dominant direction of both batches."""
    module = _build(plugin_manager, "bsp", dim=8)
    gen = torch.Generator().manual_seed(8)
    source, target = torch.randn(32, 8, generator=gen), torch.randn(32, 8, generator=gen)
    stretch = torch.ones(8)
    stretch[0] = 6.0  # one direction holds most of the energy
    scale = stretch.clone().requires_grad_()
    before = module(_step(source * scale, target * scale))["bsp"].item()
    _optimise(module, lambda: _step(source * scale, target * scale), [scale], steps=60, lr=0.05)
    after = module(_step(source * scale, target * scale))["bsp"].item()
    assert after < 0.6 * before
    s = scale.detach().abs()
    assert s[0] / s[1:].median() < 4.0  # from 6: the dominant direction shrank relative to the rest


# -- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mmd", {"wieght": 2.0}, "unknown option"),
        ("dann", {"gama": 3.0}, "did you mean|unknown option"),
        ("dann", {"hidden": "big"}, "hidden"),
        ("dann", {"feature_loss": "flipped"}, "feature_loss"),
        ("dann", {"relax": -0.5}, "relax"),
        ("fisher", {"form": "ratio"}, "form"),
        ("fisher", {"inter_weight": 0.0}, "inter_weight"),
        ("entropy", {"weight": -1.0}, "weight"),
        ("bsp", {"form": "max"}, "form"),
        ("bsp", {"k": 0}, "k"),
    ],
)
def test_bad_options_are_one_line_errors(plugin_manager, name, options, message) -> None:
    record = plugin_manager.get("strategies", name)
    with pytest.raises(GalmergeError, match=message) as info:
        record.build(_context(), options)
    assert "\n" not in str(info.value)


def test_options_from_text_are_coerced(plugin_manager) -> None:
    record = plugin_manager.get("strategies", "dann")
    module = record.build(_context(), {"hidden": "8", "gamma": "4", "max_coeff": 1})
    assert module.discriminator.net[0].out_features == 8
    assert module.gamma == 4.0


def test_unknown_strategy_lists_what_exists(plugin_manager) -> None:
    with pytest.raises(GalmergeError, match="available: .*mmd"):
        plugin_manager.get("strategies", "mdd")


def test_conditioned_dann_tells_domains_apart_by_their_class_conditionals(plugin_manager) -> None:
    """CDAN's f ⊗ p: two domains with the same feature marginal whose classes sit on opposite
    sides are indistinguishable to plain DANN's discriminator and plain to the conditioned one."""
    gen = torch.Generator().manual_seed(7)
    n = 128
    side = (torch.arange(n) % 2).float() * 2 - 1  # class 0 at -1.5, class 1 at +1.5 (source)
    feats = torch.randn(n, 8, generator=gen) * 0.3
    feats[:, 0] += 1.5 * side
    logits = torch.stack([-4 * side, 4 * side], 1)  # confident, correct on the source
    # the target: the same feature cloud, but the classifier calls each side the other class
    step = _step(feats, feats.clone(), source_logits=logits, target_logits=-logits,
                 progress=1.0)

    def domain_accuracy(condition: str) -> float:
        torch.manual_seed(0)
        module = _build(plugin_manager, "dann", dim=8, hidden=32, dropout=0.0,
                        condition=condition)
        opt = torch.optim.Adam(module.parameters(), lr=0.02)
        for _ in range(150):  # the discriminator alone learns; the features are fixed
            opt.zero_grad()
            module(step)["dann"].backward()
            opt.step()
        return float(module(step)["_domain_acc"])

    assert domain_accuracy("none") < 0.6
    assert domain_accuracy("predictions") > 0.95
    entropy = _build(plugin_manager, "dann", dim=8, condition="predictions+entropy")
    assert entropy.discriminator.net[0].in_features == 16  # d · num_classes
    with pytest.raises(GalmergeError, match="condition"):
        _build(plugin_manager, "dann", dim=8, condition="labels")


def test_cdan_entropy_weights_count_confident_images_more(plugin_manager) -> None:
    source, target = _clouds()
    sure = torch.tensor([[-6.0, 6.0]]).repeat(64, 1)
    unsure = sure.clone()
    unsure[:32] = 0.0  # the first half of the source batch: p = 0.5, maximal entropy

    def unsure_over_sure(condition: str) -> float:
        torch.manual_seed(1)
        module = _build(plugin_manager, "dann", dim=8, dropout=0.0, condition=condition)
        feats = source.clone().requires_grad_(True)
        module(_step(feats, target, source_logits=unsure, target_logits=sure))["dann"].backward()
        norms = feats.grad.norm(dim=1)
        return float(norms[:32].mean() / norms[32:].mean())

    # the same discriminator; only the weights differ: 1 + exp(-ln 2) = 1.5 for p = 0.5
    # against 1 + exp(-H(sure)) ≈ 2 (each domain's normalisation cancels in the ratio)
    ratio = unsure_over_sure("predictions+entropy") / unsure_over_sure("predictions")
    assert ratio == pytest.approx(0.75, rel=1e-3)


@pytest.mark.parametrize("feature_loss", ["reversed", "inverted"])
def test_one_sided_dann_moves_only_the_target_features(plugin_manager, feature_loss) -> None:
    source, target = _clouds()

    def grads(align: str) -> tuple[float, float, float]:
        torch.manual_seed(2)
        module = _build(plugin_manager, "dann", dim=8, dropout=0.0, align=align,
                        feature_loss=feature_loss)
        fs, ft = source.clone().requires_grad_(True), target.clone().requires_grad_(True)
        module(_step(fs, ft, progress=1.0))["dann"].backward()
        disc = sum(float(p.grad.norm()) for p in module.discriminator.parameters())
        source_grad = 0.0 if fs.grad is None else float(fs.grad.norm())
        return source_grad, float(ft.grad.norm()), disc

    both, one_sided = grads("both"), grads("target")
    assert both[0] > 0 and one_sided[0] == 0.0  # no adversarial push on the source side
    assert one_sided[1] == pytest.approx(both[1], rel=1e-5)  # the target side's is unchanged
    assert one_sided[2] == pytest.approx(both[2], rel=1e-5)  # the discriminator learns alike


@pytest.mark.parametrize("name", ["mmd", "coral"])
def test_one_sided_alignment_terms_move_only_the_target_features(plugin_manager, name) -> None:
    source, target = _clouds()
    source = source * 2.0 + 1.0  # a covariance and a mean unlike the target's

    def grads(align: str) -> tuple[float, float, float]:
        module = _build(plugin_manager, name, dim=8, align=align, warmup=0.0)
        fs, ft = source.clone().requires_grad_(True), target.clone().requires_grad_(True)
        value = module(_step(fs, ft, progress=1.0))[name]
        value.backward()
        source_grad = 0.0 if fs.grad is None else float(fs.grad.norm())
        return source_grad, float(ft.grad.norm()), float(value)

    both, one_sided = grads("both"), grads("target")
    assert both[0] > 0 and one_sided[0] == 0.0  # the source side is not pulled
    assert one_sided[1] == pytest.approx(both[1], rel=1e-6)  # the target side's pull is unchanged
    assert one_sided[2] == pytest.approx(both[2], rel=1e-6)  # and so is the term's value


@pytest.mark.parametrize("name", ["mmd", "coral", "dann"])
@pytest.mark.parametrize(("encoder", "expected"), [("separate", "target"), ("shared", "both")])
def test_align_auto_is_one_sided_exactly_with_the_targets_own_encoder(
    plugin_manager, name, encoder, expected
) -> None:
    record = plugin_manager.get("strategies", name)
    context = dataclasses.replace(_context(8), target_encoder=encoder)
    assert record.build(context, dict(record.defaults)).align == expected
    forced = record.build(context, {**record.defaults, "align": "both"})
    assert forced.align == "both"
