"""Every built-in strategy and both built-in backbones train for a few steps on tiny data."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

import galmerge
from galmerge.plugin.imageset import ImageSet


def _sets(n: int = 40) -> tuple[ImageSet, ImageSet]:
    rng = np.random.default_rng(5)

    def make(shift: float, name: str) -> ImageSet:
        labels = rng.integers(0, 2, n)
        x = rng.normal(shift, 1.0, (n, 3, 75, 75)).astype(np.float32)
        x[labels == 1, :, 30:45, 30:45] += 2.0
        return ImageSet(images=torch.from_numpy(x), labels=torch.from_numpy(labels),
                        ids=np.arange(n), bands=("g", "r", "i"), survey=name)

    return make(0.0, "tiny-sim"), make(0.7, "tiny-real")


CASES = [
    ("deepmerge", s)
    for s in ("none", "mmd", "coral", "dann", "ada", "fisher", "entropy",
              "mmd+fisher+entropy", "dann+fisher")
] + [
    pytest.param("resnet18", s, marks=pytest.mark.slow)  # ~10 s each on a shared 2-core CPU
    for s in ("none", "dann+fisher+entropy")
]


@pytest.mark.parametrize(("backbone", "strategy"), CASES)
def test_builtin_strategy_and_backbone_train(tmp_path, backbone, strategy):
    source, target = _sets()
    summary = galmerge.train(
        source=source, target=target, strategy=strategy, backbone=backbone, epochs=2,
        batch_size=8, max_steps_per_epoch=2, device="cpu", quiet=True, run_dir=tmp_path / "r",
    )
    with (tmp_path / "r" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary["epochs_run"] == 2
    terms = [c for c in rows[0] if c.startswith("loss_") and c not in ("loss_total", "loss_ce")]
    assert bool(terms) == (strategy != "none"), rows[0].keys()
    for row in rows:
        total = float(row["loss_ce"]) + sum(float(row[c]) for c in terms)
        assert float(row["loss_total"]) == pytest.approx(total, rel=1e-4)
        assert math.isfinite(float(row["loss_total"]))
    assert 0.0 <= summary["metrics"]["target_test"]["accuracy"] <= 1.0


def _one_note(err: str) -> str:
    notes = [line for line in err.splitlines() if line.startswith("galmerge train: note:")]
    assert len(notes) == 1, err
    return notes[0]


def test_a_strategy_that_reads_no_target_says_the_run_is_source_only(tmp_path, capfd):
    source, target = _sets(16)
    kw = dict(source=source, target=target, epochs=1, batch_size=8, max_steps_per_epoch=1,
              device="cpu", quiet=True)
    galmerge.train(strategy="fisher", run_dir=tmp_path / "fisher", **kw)
    # (a tiny run's collapse line may come too: quiet keeps warnings)
    note = _one_note(capfd.readouterr().err)
    assert note.startswith("galmerge train: note: fisher reads no target image")
    assert "dann+fisher" in note
    for strategy in ("none", "dann+fisher"):  # source only by choice, or adapted: no note
        galmerge.train(strategy=strategy, run_dir=tmp_path / strategy, **kw)
        assert "note:" not in capfd.readouterr().err


def test_synthetic_source_and_target_of_the_same_scenes_get_a_note(tmp_path, capfd):
    """Renders with one seed are paired images of one sky (what the README warns of): an
    adapting run says so, names the fix; another seed, or a run that reads no target, does not."""
    kw = dict(source="synthetic:illustris?n=40&size=32", epochs=1, batch_size=8,
              max_steps_per_epoch=1, device="cpu", quiet=True)
    galmerge.train(strategy="coral", target="synthetic:sdss?n=40&size=32", run_dir=tmp_path / "a",
                   **kw)
    # (a tiny run's collapse line may come too: quiet keeps warnings)
    note = _one_note(capfd.readouterr().err)
    assert note == ("galmerge train: note: source and target are renders of the same scenes "
                    "(synthetic seed 0 both): adaptation looks better than it will on a survey; "
                    "give the target another seed, e.g. 'synthetic:sdss?seed=1'")
    galmerge.train(strategy="coral", target="synthetic:sdss?n=40&size=32&seed=1",
                   run_dir=tmp_path / "b", **kw)
    galmerge.train(strategy="none", target="synthetic:sdss?n=40&size=32", run_dir=tmp_path / "c",
                   **kw)
    # another number of scenes draws other scenes from the same seed
    galmerge.train(strategy="coral", target="synthetic:sdss?n=30&size=32", run_dir=tmp_path / "d",
                   **kw)
    assert "note:" not in capfd.readouterr().err


def test_same_seed_same_run_bit_for_bit_with_two_threads(tmp_path):
    """DeepMerge + mmd+fisher+entropy with 2 intra-op threads: a batch of 32 x 2592 features
    takes ATen's parallel paths, which once made Fisher's centre gradient differ run to run."""
    source, target = _sets(n=96)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for name in ("a", "b"):
            galmerge.train(
                source=source, target=target, strategy="mmd+fisher+entropy", epochs=2,
                batch_size=32, max_steps_per_epoch=3, device="cpu", quiet=True, seed=3,
                run_dir=tmp_path / name,
            )
            with (tmp_path / name / "metrics.csv").open() as fh:
                rows = [{k: v for k, v in r.items() if k != "images_per_s"}
                        for r in csv.DictReader(fh)]
            state = torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
            runs.append((rows, state))
    finally:
        torch.set_num_threads(threads)
    (rows_a, state_a), (rows_b, state_b) = runs
    assert rows_a == rows_b
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # the shift statistics too (their SHA-256 is in every classify output): equal arrays and
    # metadata, but for the checkpoint's SHA-256, whose config names each run's own stage
    import json

    import numpy as np

    stats = []
    for name in ("a", "b"):
        with np.load(tmp_path / name / "shift_stats.npz", allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            meta.pop("checkpoint_sha256")
            stats.append((meta, {k: z[k] for k in z.files if k != "meta"}))
    assert stats[0][0] == stats[1][0]
    assert all(np.array_equal(v, stats[1][1][k]) for k, v in stats[0][1].items())
