"""Options that make DA terms independent of feature scale and ramp them in (issue 14 item 1).

Behaviour only: that each option exists, is checked, and changes the term as documented.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from galmerge.errors import GalmergeError
from galmerge.plugin.options import warmup_factor
from galmerge.plugin.strategy_api import StepInputs, StrategyContext
from galmerge.scores.selection import ensemble_agreement

RAMPED = ("mmd", "coral", "fisher", "entropy")


def _context(dim: int = 16) -> StrategyContext:
    return StrategyContext(feature_dim=dim, num_classes=2, total_steps=100,
                           device=torch.device("cpu"))  # fmt: skip


def _build(plugin_manager, name: str, **options):
    return plugin_manager.get("strategies", name).build(_context(), options)


def _step(progress: float, scale: float = 1.0, n: int = 24, seed: int = 0) -> StepInputs:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 16, generator=g)
    xt = torch.randn(n, 16, generator=g) * 1.5 + 0.7
    return StepInputs(
        source_features=scale * xs, source_logits=torch.randn(n, 2, generator=g),
        source_labels=torch.arange(n) % 2, target_features=scale * xt,
        target_logits=torch.randn(n, 2, generator=g), progress=progress,
    )  # fmt: skip


def test_warmup_factor_is_the_dann_ramp() -> None:
    assert warmup_factor(0.0, 10.0) == 0.0
    assert warmup_factor(0.1, 10.0) == pytest.approx(2 / (1 + math.exp(-1.0)) - 1)
    assert warmup_factor(1.0, 10.0) == pytest.approx(1.0, abs=1e-4)
    assert warmup_factor(0.0, 0.0) == warmup_factor(0.3, 0.0) == 1.0  # 0: no ramp
    assert warmup_factor(5.0, 10.0) == warmup_factor(1.0, 10.0)  # progress clipped


@pytest.mark.parametrize("name", RAMPED)
def test_warmup_scales_the_term_from_zero(plugin_manager, name) -> None:
    plain = _build(plugin_manager, name, warmup=0.0)
    ramped = _build(plugin_manager, name, warmup=10.0)
    if name == "fisher":  # same learnable centres in both
        ramped.load_state_dict(plain.state_dict())
    for progress in (0.0, 0.05, 0.5, 1.0):
        step = _step(progress)
        want = plain(step)[name] * warmup_factor(progress, 10.0)
        torch.testing.assert_close(ramped(step)[name], want)
    assert float(plain(_step(0.0))[name].detach()) != 0.0


def test_mean_kernel_mmd_does_not_depend_on_feature_scale(plugin_manager) -> None:
    mean = _build(plugin_manager, "mmd", kernel="mean")
    fixed = _build(plugin_manager, "mmd", kernel="deepmerge")
    values = [float(mean(_step(0.5, scale))["mmd"]) for scale in (0.01, 1.0, 100.0)]
    assert values == pytest.approx([values[1]] * 3, rel=1e-4)
    assert values[1] > 0.05  # the shifted clouds are told apart
    fixed_values = [float(fixed(_step(0.5, scale))["mmd"]) for scale in (0.01, 1.0, 100.0)]
    assert max(fixed_values) > 1.5 * min(fixed_values)  # the fixed bandwidths do depend on it
    same = _step(0.5)
    same.target_features = same.source_features.clone()
    assert float(mean(same)["mmd"]) == pytest.approx(0.0, abs=1e-6)


def test_fisher_mean_reduction_does_not_grow_with_the_batch(plugin_manager) -> None:
    sums = _build(plugin_manager, "fisher", reduction="sum")
    means = _build(plugin_manager, "fisher", reduction="mean")
    means.load_state_dict(sums.state_dict())
    small = _step(0.5, n=8)
    big = _step(0.5, n=8)
    big.source_features = small.source_features.repeat(4, 1)
    big.source_labels = small.source_labels.repeat(4)
    torch.testing.assert_close(means(big)["fisher"], means(small)["fisher"])
    torch.testing.assert_close(sums(big)["fisher"], 4 * sums(small)["fisher"])


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mmd", {"kernel": "median"}, "kernel must be one of deepmerge, mean"),
        ("mmd", {"warmup": -1.0}, "warmup must be >= 0"),
        ("mmd", {"class_weights": "yes"}, "class_weights must be one of off, estimated, bbse, given"),
        ("mmd", {"class_weights": "given"}, "needs target_fraction"),
        ("mmd", {"target_fraction": 1.0}, "target_fraction must be >= 0 and < 1"),
        ("coral", {"warmup": "fast"}, "warmup"),
        ("fisher", {"reduction": "max"}, "reduction must be one of sum, mean"),
        ("entropy", {"warmup": -0.5}, "warmup must be >= 0"),
    ],
)
def test_bad_new_options_are_one_line_errors(plugin_manager, name, options, message) -> None:
    with pytest.raises(GalmergeError, match=message) as info:
        _build(plugin_manager, name, **options)
    assert "\n" not in str(info.value)


def test_ensemble_agreement_rewards_agreeing_with_the_others() -> None:
    a = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    b = a.clone()
    c = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])  # differs on 2 of 4
    got = ensemble_agreement([a, b, c])
    assert got[2] < got[0] == got[1]
    assert got[2] == pytest.approx(0.5)
    assert all(v != v for v in ensemble_agreement([a]))  # NaN alone


def _prior_shift_step(target_mergers: int, n: int = 100) -> StepInputs:
    """Two well-separated classes; a balanced source, a target with ``target_mergers`` of ``n``
    mergers, and target logits that say which is which (as a trained head would)."""
    g = torch.Generator().manual_seed(1)
    xs = torch.cat([torch.randn(n // 2, 8, generator=g) - 2, torch.randn(n // 2, 8, generator=g) + 2])
    ys = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)]).long()
    k = target_mergers
    xt = torch.cat([torch.randn(n - k, 8, generator=g) - 2, torch.randn(k, 8, generator=g) + 2])
    zt = torch.cat([torch.tensor([[3.0, -3.0]]).repeat(n - k, 1),
                    torch.tensor([[-3.0, 3.0]]).repeat(k, 1)])
    return StepInputs(source_features=xs, source_logits=torch.zeros(n, 2), source_labels=ys,
                      target_features=xt, target_logits=zt, progress=1.0)


def test_class_weighted_mmd_discounts_a_shifted_merger_fraction(plugin_manager) -> None:
    shifted, balanced = _prior_shift_step(20), _prior_shift_step(50)
    plain = _build(plugin_manager, "mmd", weight=1.0, kernel="mean", warmup=0.0,
                   class_weights="off")
    weighted = _build(plugin_manager, "mmd", weight=1.0, kernel="mean", warmup=0.0,
                      class_weights="estimated")
    # a 20% target: plain MMD sees a large gap that is only the class mix; weighted does not
    gap_plain, gap_weighted = float(plain(shifted)["mmd"]), float(weighted(shifted)["mmd"])
    assert gap_weighted < 0.2 * gap_plain
    prior = weighted(shifted)["_target_prior"]
    assert float(prior) == pytest.approx(0.2, abs=0.01)  # the running estimate of the share
    # a balanced target: both agree (weights ~1)
    fresh = _build(plugin_manager, "mmd", weight=1.0, kernel="mean", warmup=0.0,
                   class_weights="estimated")
    assert float(fresh(balanced)["mmd"]) == pytest.approx(float(plain(balanced)["mmd"]), rel=0.05)
    # the estimate is state: it travels in the strategy's state_dict (resume, init_from)
    assert "target_prior" in weighted.state_dict() and not plain.state_dict()
    # a given fraction does the same without estimating
    given = _build(plugin_manager, "mmd", weight=1.0, kernel="mean", warmup=0.0,
                   class_weights="given", target_fraction=0.2)
    assert float(given(shifted)["mmd"]) < 0.2 * gap_plain and not given.state_dict()


def _imperfect_step(target_mergers: int, n: int = 200) -> StepInputs:
    """A balanced source and a target with ``target_mergers`` of ``n`` mergers, seen by a
    classifier with 90% recall and 10% false positives on both domains (soft outputs 0.9/0.1)."""
    def logits(labels: torch.Tensor) -> torch.Tensor:
        # per class, every 10th image is misclassified
        wrong = (torch.arange(len(labels)) % 10) == 0
        called = torch.where(wrong, 1 - labels, labels).float()
        p = 0.1 + 0.8 * called
        return torch.stack([torch.log(1 - p), torch.log(p)], dim=1)

    ys = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)]).long()
    src = torch.cat([logits(ys[: n // 2]), logits(ys[n // 2:])])
    yt = torch.cat([torch.zeros(n - target_mergers), torch.ones(target_mergers)]).long()
    tgt = torch.cat([logits(yt[: n - target_mergers]), logits(yt[n - target_mergers:])])
    g = torch.Generator().manual_seed(3)
    return StepInputs(source_features=torch.randn(n, 16, generator=g), source_logits=src,
                      source_labels=ys, target_features=torch.randn(n, 16, generator=g),
                      target_logits=tgt, progress=1.0)


@pytest.mark.parametrize("name", ["mmd", "dann"])
def test_a_source_batch_of_one_class_keeps_its_share_of_the_weighted_loss(plugin_manager,
                                                                          name) -> None:
    """With a source of few mergers, many batches hold none: the weights of the class present
    then carry the whole source side, so the loss is the unweighted one (there is nothing to
    reweight between), not one shrunk by the absent class's share (0.8 of DANN's half)."""
    step = _imperfect_step(40)
    keep = slice(60, 160)  # source: 100 non-mergers; target: 100 images, 40 of them mergers
    one_class = dataclasses.replace(
        step, source_features=step.source_features[:100], source_logits=step.source_logits[:100],
        source_labels=step.source_labels[:100], target_features=step.target_features[keep],
        target_logits=step.target_logits[keep])
    assert set(one_class.source_labels.tolist()) == {0}
    extra = {"warmup": 0.0} if name == "mmd" else {}
    torch.manual_seed(0)  # the same discriminator weights for both
    plain = _build(plugin_manager, name, weight=1.0, class_weights="off", **extra)
    torch.manual_seed(0)
    given = _build(plugin_manager, name, weight=1.0, class_weights="given",
                   target_fraction=0.2, **extra)
    torch.manual_seed(1)  # and the same dropout masks
    with_weights = given(one_class)[name].item()
    torch.manual_seed(1)
    assert with_weights == pytest.approx(plain(one_class)[name].item(), rel=1e-6)


@pytest.mark.parametrize("name", ["mmd", "dann"])
def test_bbse_class_weights_correct_the_classifier_errors(plugin_manager, name) -> None:
    step = _imperfect_step(40)  # a 20% target
    true_share = 0.2
    estimated = _build(plugin_manager, name, class_weights="estimated")
    bbse = _build(plugin_manager, name, class_weights="bbse")
    naive = float(estimated(step)["_target_prior"])
    corrected = float(bbse(step)["_target_prior"])
    # the plain soft mean reads 0.2 * 0.82 + 0.8 * 0.18 = 0.31 (mean p of mergers, non-mergers)
    assert naive > true_share + 0.1
    assert corrected == pytest.approx(true_share, abs=0.01)
    state = bbse.state_dict()
    assert {"target_prior", "target_mean", "source_conditional"} <= set(state)
    assert not {"target_mean", "source_conditional"} & set(estimated.state_dict())


def test_bbse_keeps_the_source_guess_until_the_classifier_separates(plugin_manager) -> None:
    step = _imperfect_step(40)
    blind = StepInputs(source_features=step.source_features,
                       source_logits=torch.zeros_like(step.source_logits),
                       source_labels=step.source_labels, target_features=step.target_features,
                       target_logits=step.target_logits, progress=1.0)
    bbse = _build(plugin_manager, "dann", class_weights="bbse")
    assert float(bbse(blind)["_target_prior"]) == pytest.approx(0.5)


def test_class_weighted_dann_reweights_only_the_source_side(plugin_manager) -> None:
    step = _imperfect_step(40)
    torch.manual_seed(0)
    plain = _build(plugin_manager, "dann", class_weights="off", dropout=0.0)
    torch.manual_seed(0)
    balanced = _build(plugin_manager, "dann", class_weights="given", target_fraction=0.5,
                      dropout=0.0)
    torch.manual_seed(0)
    shifted = _build(plugin_manager, "dann", class_weights="given", target_fraction=0.2,
                     dropout=0.0)
    # weights of 1 (a 50% guess for a balanced source batch) give plain DANN's loss exactly
    assert float(balanced(step)["dann"].detach()) == pytest.approx(
        float(plain(step)["dann"].detach()), rel=1e-6)

    def merger_pull(module) -> float:
        """Mean gradient norm on source mergers over that on source non-mergers."""
        feats = step.source_features.clone().requires_grad_(True)
        module(StepInputs(source_features=feats, source_logits=step.source_logits,
                          source_labels=step.source_labels,
                          target_features=step.target_features,
                          target_logits=step.target_logits, progress=1.0))["dann"].backward()
        norms = feats.grad.norm(dim=1)
        return float(norms[step.source_labels == 1].mean() / norms[step.source_labels == 0].mean())

    # a 20% guess: source mergers weigh 0.2/0.5, non-mergers 0.8/0.5, a ratio of 1/4
    assert merger_pull(plain) == pytest.approx(1.0, rel=0.2)
    assert merger_pull(shifted) == pytest.approx(0.25, rel=0.2)
    with pytest.raises(GalmergeError, match="dann option class_weights=given needs"):
        _build(plugin_manager, "dann", class_weights="given")
