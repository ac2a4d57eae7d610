"""Trainer behaviour through `galmerge.train(...)` and `galmerge train` on tiny real runs."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import h5py
import pytest
import torch
from train_toys import ToyPlugin, toy_sets

import galmerge
from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet

SUMMARY_KEYS = {
    "source", "target", "strategy", "backbone", "seed", "epochs_run", "best_epoch",
    "train_images_per_s", "metrics", "select_by", "device", "run_dir", "duration_s",
    "train_seconds",
}
METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "brier", "auc"}


@pytest.fixture
def toys(register_plugin, plugin_manager):
    plugin = ToyPlugin()
    if "none" in plugin_manager.components("strategies"):
        from train_toys import _NoNone

        plugin = _NoNone()
    register_plugin(plugin, "toys")
    return plugin


def _run(tmp_path: Path, name: str = "run", **kwargs):
    source, target = toy_sets()
    args = dict(
        strategy="meangap", backbone="tiny", epochs=2, batch_size=8, seed=1, device="cpu",
        quiet=True, run_dir=tmp_path / name,
    )
    args.update(kwargs)
    return galmerge.train(source=args.pop("source", source), target=args.pop("target", target), **args)


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _without_speed(rows):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


def test_run_directory_and_summary(toys, tmp_path):
    summary = _run(tmp_path)
    run = tmp_path / "run"
    for name in ("config.toml", "env.json", "metrics.csv", "summary.json", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    assert set(summary) >= SUMMARY_KEYS
    assert json.loads((run / "summary.json").read_text()) == summary
    for split in ("source_test", "target_test"):
        assert set(summary["metrics"][split]) == METRIC_KEYS
        assert 0.0 <= summary["metrics"][split]["accuracy"] <= 1.0
    assert summary["epochs_run"] == 2 and 1 <= summary["best_epoch"] <= 2
    assert summary["train_images_per_s"] > 0
    assert 0 < summary["train_seconds"] <= summary["duration_s"]
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in ("loss_total", "loss_ce", "loss_meangap", "diag_gap", "source_val_loss",
                   "source_val_accuracy", "target_val_accuracy", "lr", "images_per_s"):
        assert column in rows[0], column
    # the weighted terms add up to the total
    r = rows[0]
    assert float(r["loss_total"]) == pytest.approx(float(r["loss_ce"]) + float(r["loss_meangap"]),
                                                   rel=1e-5)
    env = json.loads((run / "env.json").read_text())
    assert {"python", "torch", "platform", "device", "galmerge", "plugins", "cpu_threads"} <= set(env)
    # bit-for-bit reruns need the same CPU kind and thread count: both are recorded
    assert env["cpu"]["model"] and env["cpu"]["torch_cpu_capability"] == (
        torch.backends.cpu.get_cpu_capability()
    )
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["seed"] == 1 and config["strategies"]["meangap"] == {
        "weight": 1.0, "power": 1.0, "nan_at": -1
    }
    assert config["optimizer"]["betas"] == [0.7, 0.8]


def test_checkpoints_load_weights_only_and_rebuild(toys, tmp_path):
    _run(tmp_path)
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run / name, weights_only=True)
        assert payload["format"] == "galmerge-checkpoint/1"
        assert set(payload["preprocess"]) == {"source", "target"}
        assert payload["preprocess"]["source"]["channels"] == 2
    assert torch.load(run / "last.pt", weights_only=True)["training_state"]["optimizer"]
    from galmerge.models.model import load_model

    loaded = load_model(run)
    feats, logits = loaded.model(torch.zeros(3, 2, 8, 8))
    assert logits.shape == (3, 2) and feats.shape[1] == loaded.model.out_features


def test_same_seed_gives_identical_metrics_and_other_seed_differs(toys, tmp_path):
    a = _run(tmp_path, "a")
    b = _run(tmp_path, "b")
    c = _run(tmp_path, "c", seed=2)
    assert _without_speed(_rows(tmp_path / "a")) == _without_speed(_rows(tmp_path / "b"))
    assert a["metrics"] == b["metrics"]
    assert _without_speed(_rows(tmp_path / "a")) != _without_speed(_rows(tmp_path / "c"))
    assert c["seed"] == 2


def test_cross_entropy_decreases_on_toy_problem(toys, tmp_path):
    summary = _run(tmp_path, strategy="none", epochs=8, lr=0.02, patience=0)
    rows = _rows(tmp_path / "run")
    assert float(rows[-1]["loss_ce"]) < float(rows[0]["loss_ce"])
    assert summary["metrics"]["source_test"]["accuracy"] >= 0.75


def test_streaming_from_hdf5_matches_in_memory(toys, tmp_path):
    source, target = toy_sets()
    path = tmp_path / "source.h5"
    with h5py.File(path, "w") as fh:
        fh["images"] = source.images.numpy()
    with h5py.File(path, "r") as fh:
        lazy = ImageSet(images=fh["images"], labels=source.labels, ids=source.ids,
                        bands=source.bands, survey=source.survey)
        assert not lazy.in_memory
        streamed = _run(tmp_path, "lazy", source=lazy, target=target)
    in_memory = _run(tmp_path, "mem", source=source, target=target)
    rows_lazy, rows_mem = _rows(tmp_path / "lazy"), _rows(tmp_path / "mem")
    for a, b in zip(rows_lazy, rows_mem, strict=True):
        assert float(a["loss_total"]) == pytest.approx(float(b["loss_total"]), rel=1e-4)
    assert streamed["metrics"]["source_test"]["accuracy"] == pytest.approx(
        in_memory["metrics"]["source_test"]["accuracy"]
    )


def test_early_stopping_stops_and_keeps_best(toys, tmp_path):
    # lr so small nothing improves after the first epoch or two: patience 1 must stop early
    summary = _run(tmp_path, epochs=30, lr=1e-9, patience=1)
    assert summary["stopped_early"] is True
    assert summary["epochs_run"] < 30
    assert summary["epochs_run"] == summary["best_epoch"] + 1


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(toys, tmp_path):
    with pytest.raises(GalmergeError, match="non-finite") as info:
        # 5 steps per epoch: the term turns NaN during epoch 2
        _run(tmp_path, epochs=3, strategy_options={"meangap": {"nan_at": 7}})
    assert "\n" not in str(info.value)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["training_state"]["epoch"] == 2  # written after epoch 1, the last good state
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_checkpoint_is_never_written_from_a_non_finite_state(toys, tmp_path, monkeypatch):
    """On accelerators the loss is checked every 25 steps only; a --checkpoint-every save in
    between must check first, or NaN weights replace the last good last.pt."""
    from galmerge.training import plan as training

    monkeypatch.setattr(training, "nonfinite_check_interval", lambda device: 25)
    with pytest.raises(GalmergeError, match="non-finite"):
        # 5 steps per epoch, saves at global steps 2, 4, 6, 8; the term is NaN from step 8 on
        _run(tmp_path, epochs=3, checkpoint_every=2, strategy_options={"meangap": {"nan_at": 7}})
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    state = last["training_state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 1, 6)
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in state["accumulators"].values())


def test_checkpoints_record_the_epochs_their_weights_completed(toys, tmp_path):
    summary = _run(tmp_path, epochs=3, checkpoint_every=7)
    run = tmp_path / "run"
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and last["training_state"]["epoch"] == 4  # resumes at epoch 4
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == summary["best_epoch"]


def test_init_from_loads_weights_and_rejects_mismatch(toys, tmp_path):
    _run(tmp_path, "first")
    best = torch.load(tmp_path / "first" / "best.pt", weights_only=True)["model"]
    summary = _run(tmp_path, "second", init_from=tmp_path / "first", epochs=1, lr=1e-12)
    second = torch.load(tmp_path / "second" / "last.pt", weights_only=True)["model"]
    # with a vanishing learning rate the weights stay those loaded
    for key, value in best.items():
        if value.is_floating_point():
            assert torch.allclose(value, second[key], atol=1e-6), key
    assert summary["epochs_run"] == 1
    with pytest.raises(GalmergeError, match="do not fit") as info:
        _run(tmp_path, "third", init_from=tmp_path / "first", backbone_options={"width": 6})
    assert "\n" not in str(info.value)


def test_api_rejects_different_channels(toys, tmp_path):
    source, _ = toy_sets(channels=2)
    _, target = toy_sets(channels=3)
    with pytest.raises(GalmergeError, match="same bands"):
        _run(tmp_path, source=source, target=target)


def test_strategy_alias_and_options_recorded(toys, tmp_path):
    _run(tmp_path, strategy="mg", sets=["mg.weight=0.25", "meangap.power=2"])
    config = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert config["strategy"] == "meangap"
    assert config["strategies"]["meangap"]["weight"] == 0.25
    assert config["strategies"]["meangap"]["power"] == 2


def _hide_labels(imageset: ImageSet, labels: torch.Tensor) -> ImageSet:
    return ImageSet(images=imageset.images, labels=labels, ids=imageset.ids,
                    bands=imageset.bands, survey=imageset.survey)


@pytest.mark.parametrize("select_by", ["source_val_loss", "im"])
def test_target_labels_never_change_training_or_selection(toys, tmp_path, select_by):
    source, target = toy_sets()
    flipped = _hide_labels(target, 1 - target.labels)
    unknown = _hide_labels(target, torch.full_like(target.labels, -1))
    runs = {}
    for name, tgt in (("real", target), ("flipped", flipped), ("unknown", unknown)):
        runs[name] = _run(tmp_path, name, source=source, target=tgt, epochs=3,
                          select_by=select_by)
    blind = [
        [{k: v for k, v in r.items() if not k.startswith(("target_val", "images_per_s"))}
         for r in _rows(tmp_path / name)]
        for name in runs
    ]
    assert blind[0] == blind[1] == blind[2]
    assert {r["best_epoch"] for r in runs.values()} == {runs["real"]["best_epoch"]}
    assert runs["real"]["metrics"]["source_test"] == runs["flipped"]["metrics"]["source_test"]
    # ...while the reported target numbers do see the labels
    real, flip = (runs[n]["metrics"]["target_test"]["accuracy"] for n in ("real", "flipped"))
    assert real == pytest.approx(1 - flip)
    assert runs["unknown"]["metrics"]["target_test"]["accuracy"] is None  # NaN -> null


def test_select_by_label_free_score_and_oracle(toys, tmp_path):
    summary = _run(tmp_path, "im", select_by="im", epochs=3)
    rows = _rows(tmp_path / "im")
    scores = [float(r["score_im"]) for r in rows]
    assert summary["select_by"] == "im"
    assert summary["best_epoch"] == 1 + scores.index(min(scores))
    oracle = _run(tmp_path, "oracle", select_by="oracle_target_accuracy", epochs=3)
    accs = [float(r["target_val_accuracy"]) for r in _rows(tmp_path / "oracle")]
    assert oracle["best_epoch"] == 1 + accs.index(max(accs))


def test_adaptation_term_decreases_when_weighted(toys, tmp_path):
    gaps = {}
    for weight in (0.0, 5.0):
        name = f"w{weight}"
        _run(tmp_path, name, epochs=8, lr=0.02, patience=0,
             strategy_options={"meangap": {"weight": weight}})
        gaps[weight] = [float(r["diag_gap"]) for r in _rows(tmp_path / name)]
    assert gaps[5.0][-1] < gaps[5.0][0]
    assert gaps[5.0][-1] < 0.5 * gaps[0.0][-1], gaps
