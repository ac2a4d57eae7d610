"""Label-free selection scores on constructed outputs whose right answer is known."""

from __future__ import annotations

import math

import torch

from galmerge.scores import selection
from galmerge.scores.selection import SplitOutputs


def _logits_from_probs(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)


def _unknown(n: int) -> torch.Tensor:
    return torch.full((n,), -1, dtype=torch.int64)


def test_entropy_is_log2_for_uniform_and_lower_for_confident() -> None:
    uniform = torch.zeros(40, 2)
    confident = _logits_from_probs(torch.tensor([0.99, 0.01] * 20))
    assert math.isclose(selection.prediction_entropy(uniform), math.log(2), rel_tol=1e-9)
    assert selection.prediction_entropy(confident) < 0.1
    assert selection.better("entropy", selection.prediction_entropy(confident), math.log(2))


def test_im_prefers_confident_and_balanced_over_collapsed() -> None:
    balanced = _logits_from_probs(torch.tensor([0.999, 0.001] * 20))
    collapsed = _logits_from_probs(torch.full((40,), 0.999))
    uniform = torch.zeros(40, 2)
    im_balanced = selection.information_maximisation(balanced)
    im_collapsed = selection.information_maximisation(collapsed)
    # balanced confident predictions: -(mutual information) = -log 2
    assert math.isclose(im_balanced, -math.log(2), abs_tol=0.02)
    assert abs(im_collapsed) < 0.02
    assert abs(selection.information_maximisation(uniform)) < 1e-12
    assert selection.better("im", im_balanced, im_collapsed)
    # entropy alone cannot tell these two apart; IM can
    assert math.isclose(
        selection.prediction_entropy(balanced),
        selection.prediction_entropy(collapsed),
        rel_tol=1e-4,
    )


def test_snd_is_higher_for_clustered_than_for_scattered_predictions() -> None:
    g = torch.Generator().manual_seed(0)
    n = 60
    clustered = torch.cat(
        [
            0.97 + 0.02 * torch.rand(n // 2, generator=g),
            0.01 + 0.02 * torch.rand(n // 2, generator=g),
        ]
    )
    scattered = torch.linspace(0.01, 0.99, n)
    snd_clustered = selection.soft_neighbourhood_density(_logits_from_probs(clustered))
    snd_scattered = selection.soft_neighbourhood_density(_logits_from_probs(scattered))
    assert snd_clustered > snd_scattered
    assert selection.better("snd", snd_clustered, snd_scattered)
    # the entropy of a distribution over n-1 neighbours is at most log(n-1)
    assert snd_clustered <= math.log(n - 1) + 1e-9


def test_dev_weights_near_one_for_overlapping_and_tiny_for_separated_domains() -> None:
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(200, 50, generator=g)
    ft_same = torch.randn(200, 50, generator=g)
    ft_far = torch.randn(200, 50, generator=g) + 4.0
    w_same = selection.density_ratio_weights(fs, ft_same)
    w_far = selection.density_ratio_weights(fs, ft_far)
    assert 0.7 < w_same.mean() < 1.4
    assert w_far.max() < 0.05


def test_dev_recovers_the_loss_where_the_target_lives() -> None:
    g = torch.Generator().manual_seed(2)
    n = 200
    near = torch.randn(n, 20, generator=g)  # source samples that look like the target
    far = torch.randn(n, 20, generator=g) + 5.0
    fs = torch.cat([near, far])
    losses = torch.cat([torch.full((n,), 2.0), torch.full((n,), 0.1)])
    logits = torch.zeros(2 * n, 2)
    labels = torch.zeros(2 * n, dtype=torch.int64)
    source = SplitOutputs(fs, logits, labels, losses)
    target = SplitOutputs(torch.randn(n, 20, generator=g), torch.zeros(n, 2), _unknown(n))
    dev = selection.deep_embedded_validation(source, target)
    assert math.isclose(float(losses.mean()), 1.05, rel_tol=1e-5)
    assert 1.7 < dev < 2.3, dev  # the target risk is the near-cluster loss, 2.0


def test_label_free_scores_never_read_target_labels_or_disturb_rng() -> None:
    g = torch.Generator().manual_seed(3)
    fs, ft = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g)
    zs, zt = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    ys = torch.randint(0, 2, (50,), generator=g)
    source = SplitOutputs(fs, zs, ys)
    state = torch.get_rng_state()
    hidden = selection.label_free_scores(source, SplitOutputs(ft, zt, _unknown(50)))
    assert torch.equal(state, torch.get_rng_state())
    labelled = selection.label_free_scores(source, SplitOutputs(ft, zt, 1 - ys))
    assert hidden == labelled
    assert set(hidden) == set(selection.SCORES)
    expected_loss = float(torch.nn.functional.cross_entropy(zs, ys))
    assert math.isclose(hidden["source_val_loss"], expected_loss, rel_tol=1e-6)


def test_label_free_scores_leave_the_gpu_generators_alone(monkeypatch) -> None:
    """DEV's PCA seeds only the CPU generator it restores: a validation must not reset the
    CUDA/MPS streams that GPU dropout draws from (recorded here, as this machine has no GPU)."""
    seeded: list[tuple[str, int]] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: seeded.append(("cuda", s)))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda s: seeded.append(("mps", s)))
    g = torch.Generator().manual_seed(4)
    fs, ft = torch.randn(60, 8, generator=g), torch.randn(60, 8, generator=g) + 0.3
    zs, zt = torch.randn(60, 2, generator=g), torch.randn(60, 2, generator=g)
    ys = torch.randint(0, 2, (60,), generator=g)
    first = selection.label_free_scores(SplitOutputs(fs, zs, ys), SplitOutputs(ft, zt, _unknown(60)))
    assert seeded == []
    again = selection.label_free_scores(SplitOutputs(fs, zs, ys), SplitOutputs(ft, zt, _unknown(60)))
    assert first == again  # still seeded: DEV is the same number every time


def test_oracle_is_target_accuracy_and_named_oracle() -> None:
    logits = _logits_from_probs(torch.tensor([0.9, 0.8, 0.2, 0.4]))
    labels = torch.tensor([1, 0, 0, -1])
    out = selection.oracle_scores(SplitOutputs(torch.zeros(4, 3), logits, _unknown(4)), labels)
    assert list(out) == ["oracle_target_accuracy"]
    assert math.isclose(out["oracle_target_accuracy"], 2 / 3)
    assert "oracle_target_accuracy" not in selection.SCORES


def test_better_and_select_epoch_follow_directions_and_skip_nan() -> None:
    assert selection.better("source_val_loss", 0.1, 0.2)
    assert selection.better("snd", 0.3, 0.2)
    assert selection.better("oracle_target_accuracy", 0.9, 0.8)
    assert not selection.better("dev", math.nan, 1.0)
    assert selection.better("dev", 1.0, math.nan)
    assert selection.select_epoch([math.nan, 0.5, 0.2, 0.2, 0.9], "entropy") == 2
    assert selection.select_epoch([math.nan, 0.5, 0.2, 0.2, 0.9], "snd") == 4
    assert selection.select_epoch([math.nan, math.nan], "im") is None
