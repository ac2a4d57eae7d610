"""`galmerge evaluate`'s bootstrap: each domain resamples from its own stream of the seed (they
shared one: equal-sized source and target test sets were resampled at the same indices, which
correlates any gap between their intervals), and one seed still gives one metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair

import galmerge
from galmerge.cli import cli
from galmerge.evaluation import pipeline


def _evaluate(run: Path) -> dict:
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--device", "cpu", "--bootstrap",
                                      "25", "--embedding-points", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    payload = json.loads((run / "report" / "metrics.json").read_text())
    payload.pop("created_utc")
    return payload


def test_domains_draw_independent_resamples_and_a_seed_repeats(tmp_path, monkeypatch):
    source, target = write_pair(tmp_path / "data", n=60)
    run = tmp_path / "run"
    tiny_run(run, source, target, "none", epochs=1)
    drawn: list[np.ndarray] = []
    resampled = pipeline._resampled_metrics

    def spy(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
        drawn.append(idx.copy())
        return resampled(y, p, idx)

    monkeypatch.setattr(pipeline, "_resampled_metrics", spy)
    first = _evaluate(run)
    sizes = {d: first["metrics"][f"{d}_test"]["n"] for d in ("source", "target")}
    assert sizes["source"] == sizes["target"] > 1, sizes  # same size: the case that collided
    assert len(drawn) == 2 and drawn[0].shape == drawn[1].shape
    # independent streams agree at about 1/n of the positions, not everywhere
    assert np.mean(drawn[0] == drawn[1]) < 0.2
    second = _evaluate(run)
    assert second == first
    assert all(np.array_equal(a, b) for a, b in zip(drawn[:2], drawn[2:], strict=True))
    galmerge.evaluate(run, device="cpu", bootstrap=25, embedding_points=8, quiet=True, seed=1)
    assert not np.array_equal(drawn[4], drawn[0])  # another seed, other resamples
