"""Trainer options of the DeepMerge II issue: source-only `none` and `adabn`, domain BatchNorm,
the cyclic schedule, learning-rate multipliers, early stopping apart from model selection,
transfer learning with kept preprocessing, the on_epoch callback and old last.pt files."""

from __future__ import annotations

import csv
import math
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn
from train_toys import ToyPlugin, _NoNone, toy_sets

import galmerge
from galmerge import hookimpl
from galmerge.errors import GalmergeError
from galmerge.plugin.records import Backbone
from galmerge.training.optim import cyclic_lr
from galmerge.training.stopping import deepmerge_counter


class TinyBN(nn.Module):
    """A conv + BatchNorm backbone: BatchNorm is where target images would leave a trace."""

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.out_features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BNPlugin:
    @hookimpl
    def register_backbones(self):
        return [Backbone(name="tinybn", description="test", build=lambda c, s: TinyBN(c, s))]


@pytest.fixture
def toys(register_plugin, plugin_manager):
    register_plugin(_NoNone() if "none" in plugin_manager.components("strategies") else ToyPlugin(),
                    "toys")
    register_plugin(BNPlugin(), "bn")


def _run(tmp_path: Path, name: str, **kwargs):
    source, target = toy_sets()
    args = dict(strategy="none", backbone="tinybn", epochs=2, batch_size=8, seed=1, device="cpu",
                quiet=True, run_dir=tmp_path / name)
    args.update(kwargs)
    return galmerge.train(source=args.pop("source", source), target=args.pop("target", target),
                          **args)


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _weights(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / name, weights_only=True)["model"]


def _other_target():
    _, target = toy_sets(seed=5)
    return target


def test_none_never_forwards_the_target_and_adabn_does(toys, tmp_path):
    runs = {}
    for strategy in ("none", "adabn"):
        for label, target in (("a", toy_sets()[1]), ("b", _other_target())):
            runs[strategy, label] = _run(tmp_path, f"{strategy}-{label}", strategy=strategy,
                                         target=target)
    a, b = _weights(tmp_path / "none-a"), _weights(tmp_path / "none-b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # BatchNorm running stats included
    assert runs["none", "a"]["metrics"]["source_test"] == runs["none", "b"]["metrics"]["source_test"]
    source_cols = [[{k: v for k, v in r.items() if k.startswith(("loss", "source"))}
                    for r in _rows(tmp_path / f"none-{x}")] for x in "ab"]
    assert source_cols[0] == source_cols[1]
    # adabn: the target batch shapes BatchNorm, so another target gives other weights
    a, b = _weights(tmp_path / "adabn-a"), _weights(tmp_path / "adabn-b")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_separate_domain_batchnorm_differs_from_joint(toys, tmp_path):
    _run(tmp_path, "joint", strategy="meangap", sets=["domain_batchnorm=joint"])
    _run(tmp_path, "separate", strategy="meangap")
    config = tomllib.loads((tmp_path / "separate" / "config.toml").read_text())
    assert config["domain_batchnorm"] == "separate"  # the default
    a, b = _weights(tmp_path / "joint"), _weights(tmp_path / "separate")
    assert not all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(GalmergeError, match="domain_batchnorm must be one of"):
        _run(tmp_path, "bad", sets=["domain_batchnorm=mixed"])


def _cycle1(lr: float, iter_num: int, epoch_length: int, cycle_length: float) -> float:
    """DeepMerge II's lr_schedule.cycle1 as written there (float modulo included)."""
    min_lr, max_lr = lr / 10, lr
    num_cycle_steps = int(cycle_length * epoch_length * (1.0 - 0.1))
    on_step = (iter_num / num_cycle_steps - (iter_num // num_cycle_steps)) * num_cycle_steps
    if on_step <= num_cycle_steps // 2:
        return min_lr + (max_lr - min_lr) * on_step / (num_cycle_steps // 2)
    scale = (on_step - num_cycle_steps // 2) / (num_cycle_steps - num_cycle_steps // 2)
    return max_lr - (max_lr - min_lr) * scale


def test_cyclic_schedule_follows_deepmerge_cycle1(toys, tmp_path):
    # 60 toy images -> 42 train -> 5 steps/epoch at batch 8; cycle 3 epochs -> period 13 steps
    _run(tmp_path, "cyc", epochs=7, lr=0.01, patience=0,
         sets=["schedule.kind=cyclic", "schedule.cycle_length=3"])
    rows = _rows(tmp_path / "cyc")
    for epoch, row in enumerate(rows, start=1):
        step = epoch * 5 - 1  # the lr column is the lr of each epoch's last step
        assert float(row["lr"]) == pytest.approx(_cycle1(0.01, step, 5, 3), rel=1e-9), epoch
    for step in range(0, 200, 7):
        assert cyclic_lr(1e-3, step, int(5 * 85 * 0.9)) == pytest.approx(
            _cycle1(1e-3, step, 85, 5), rel=1e-9, abs=1e-15)


def test_epoch_steps_ceil_counts_steps_as_a_dataloader_without_drop_last(toys, tmp_path):
    # 42 train images at batch 8: floor 5 steps/epoch (the default), ceil 6, as DeepMerge II's
    # len(DataLoader); the cyclic period follows (int(0.9 * 3 * 6) = 16 steps)
    _run(tmp_path, "ceil", epochs=4, lr=0.01, patience=0,
         sets=["schedule.kind=cyclic", "schedule.cycle_length=3", "epoch_steps=ceil"])
    rows = _rows(tmp_path / "ceil")
    for epoch, row in enumerate(rows, start=1):
        assert float(row["lr"]) == pytest.approx(_cycle1(0.01, epoch * 6 - 1, 6, 3), rel=1e-9)
    state = torch.load(tmp_path / "ceil" / "last.pt", weights_only=True)["training_state"]
    assert state["global_step"] == 4 * 6 and state["source_batches"]["drawn"] == 4 * 6
    config = tomllib.loads((tmp_path / "ceil" / "config.toml").read_text())
    assert config["epoch_steps"] == "ceil"
    with pytest.raises(GalmergeError, match="epoch_steps must be one of floor, ceil"):
        _run(tmp_path, "bad", sets=["epoch_steps=round"])


@pytest.mark.parametrize("steps, pct_start", [(5, 0.1), (1, 0.5), (3, 1 / 6)])
def test_onecycle_phases_of_one_step_train(toys, tmp_path, steps, pct_start):
    # 2 epochs of `steps`: a warm-up of one step, pct_start · total steps = 1, had zero length
    # in OneCycleLR and divided by zero
    _run(tmp_path, "oc", epochs=2, lr=0.01, patience=0, max_steps_per_epoch=steps,
         sets=[f"schedule.pct_start={pct_start!r}"])
    lrs = [float(row["lr"]) for row in _rows(tmp_path / "oc")]
    assert len(lrs) == 2 and all(0 < lr <= 0.01 for lr in lrs)


def _group_lrs(run: Path) -> list[float]:
    state = torch.load(run / "last.pt", weights_only=True)["training_state"]
    return [g["lr"] for g in state["optimizer"]["param_groups"]]


def test_learning_rate_multipliers_declared_overridden_and_recorded(toys, tmp_path):
    sched = ["schedule.kind=cyclic"]
    _run(tmp_path, "declared", strategy="fisher+dann", epochs=1, sets=sched)
    lrs = _group_lrs(tmp_path / "declared")
    assert len(lrs) == 3  # model, fisher centres x10, dann discriminator x0.1
    assert lrs[1] == pytest.approx(10 * lrs[0]) and lrs[2] == pytest.approx(0.1 * lrs[0])
    config = tomllib.loads((tmp_path / "declared" / "config.toml").read_text())
    assert config["lr_multipliers"] == {"fisher.centers": 10.0, "dann.discriminator": 0.1}

    _run(tmp_path, "override", strategy="fisher+ada", epochs=1,
         sets=[*sched, "lr_multipliers.fisher.centers=3", "lr_multipliers.ada.discriminator=1",
               "lr_multipliers.model.head=2"])
    lrs = _group_lrs(tmp_path / "override")
    assert lrs[1:] == pytest.approx([2 * lrs[0], 3 * lrs[0]])  # head x2, centres x3, rest x1
    config = tomllib.loads((tmp_path / "override" / "config.toml").read_text())
    assert config["lr_multipliers"] == {
        "fisher.centers": 3.0, "dann.discriminator": 1.0, "model.head": 2.0
    }
    _run(tmp_path, "pinned", strategy="fisher", epochs=1, sets=[*sched, "lr_multipliers.*=1"])
    assert len(_group_lrs(tmp_path / "pinned")) == 1
    with pytest.raises(GalmergeError, match="matches no parameter"):
        _run(tmp_path, "typo", strategy="fisher", sets=["lr_multipliers.fisher.centres=2"])
    with pytest.raises(GalmergeError, match="neither 'model' nor a strategy"):
        _run(tmp_path, "owner", sets=["lr_multipliers.fishr.centers=2"])


def test_a_frozen_backbone_trains_with_multiplier_zero(toys, tmp_path):
    _run(tmp_path, "first", epochs=1)
    for name, sets in (("frozen", ["lr_multipliers.model.backbone=0"]), ("free", [])):
        _run(tmp_path, name, epochs=2, patience=0, init_from=tmp_path / "first", sets=sets)
    first, frozen, free = (torch.load(tmp_path / n / "last.pt", weights_only=True)["model"]
                           for n in ("first", "frozen", "free"))
    weights = [k for k in first if k.startswith("backbone.") and "running" not in k
               and "num_batches" not in k]
    assert weights and all(torch.equal(first[k], frozen[k]) for k in weights)
    assert not all(torch.equal(first[k], free[k]) for k in weights)
    assert not torch.equal(first["head.weight"], frozen["head.weight"])  # the head learns
    # the lr column is the schedule's, as without the multiplier
    assert [r["lr"] for r in _rows(tmp_path / "frozen")] == [
        r["lr"] for r in _rows(tmp_path / "free")]


def test_deepmerge_graded_counter_on_a_constructed_sequence():
    losses = [1.0, 1.5, 1.35, 1.25, 1.15, 1.05, 0.9, 1.35, 2.0, 0.95]
    expected = [0, 1, 1.5, 1.75, 1.85, 1.85, 1.85, 2.85, 3.85, 3.85]
    assert deepmerge_counter(losses, patience=20) == pytest.approx(expected)
    # accuracies: "worse" is lower
    assert deepmerge_counter([0.9, 0.4, 0.75, 0.95], 20, "max") == pytest.approx([0, 1, 1.1, 1.1])


def test_early_stopping_by_deepmerge_rule_apart_from_best_checkpoint(toys, tmp_path):
    summary = _run(tmp_path, "dm", epochs=4, lr=0.05, patience=20,
                   select_by="source_val_accuracy",
                   sets=["early_stopping=deepmerge", "stop_by=source_val_batch_loss"])
    rows = _rows(tmp_path / "dm")
    accs = [float(r["source_val_accuracy"]) for r in rows]
    assert summary["best_epoch"] == 1 + accs.index(max(accs))
    batch_losses = [float(r["source_val_batch_loss"]) for r in rows]
    assert all(math.isfinite(v) for v in batch_losses)
    best = torch.load(tmp_path / "dm" / "last.pt", weights_only=True)["training_state"]["best"]
    assert best["counter"] == pytest.approx(deepmerge_counter(batch_losses, 20)[-1])
    assert best["stop_value"] == pytest.approx(min(batch_losses))
    # a counter above a patience of 0.05 stops at once; none stays 0 and never stops
    stopped = _run(tmp_path, "stop", epochs=6, lr=5.0, patience=1,
                   sets=["early_stopping=deepmerge", "stop_by=source_val_loss"])
    losses = [float(r["source_val_loss"]) for r in _rows(tmp_path / "stop")]
    counters = deepmerge_counter(losses, 1)
    assert stopped["stopped_early"] == (counters[-1] > 1)
    assert stopped["epochs_run"] == next((i + 1 for i, c in enumerate(counters) if c > 1), 6)


def test_on_epoch_sees_each_row_and_its_exception_ends_the_run(toys, tmp_path):
    seen = []
    _run(tmp_path, "ok", epochs=2, on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2]
    assert seen[1]["source_val_loss"] == pytest.approx(float(_rows(tmp_path / "ok")[1]["source_val_loss"]))

    class Pruned(Exception):
        pass

    def prune(row):
        raise Pruned(row["epoch"])

    with pytest.raises(Pruned):
        _run(tmp_path, "pruned", epochs=3, on_epoch=prune)
    assert len(_rows(tmp_path / "pruned")) == 1
    done = galmerge.train(resume=tmp_path / "pruned", quiet=True, source=toy_sets()[0],
                          target=toy_sets()[1])
    assert done["epochs_run"] == 3


def test_init_from_keeps_preprocessing_and_loads_strategy_state(toys, tmp_path):
    _run(tmp_path, "first", strategy="dann")
    first = torch.load(tmp_path / "first" / "best.pt", weights_only=True)
    assert any(k.startswith("dann.discriminator") for k in first["strategy_state"])
    _run(tmp_path, "second", strategy="dann", target=_other_target(), epochs=1, lr=1e-12,
         init_from=tmp_path / "first", sets=["init_keep_preprocess=true"])
    second = torch.load(tmp_path / "second" / "last.pt", weights_only=True)
    assert second["preprocess"] == first["preprocess"]
    for key, value in first["strategy_state"].items():
        assert torch.allclose(value, second["strategy_state"][key], atol=1e-6), key
    _run(tmp_path, "third", strategy="dann", target=_other_target(), epochs=1,
         init_from=tmp_path / "first")
    third = torch.load(tmp_path / "third" / "last.pt", weights_only=True)
    assert third["preprocess"]["target"]["mean"] != first["preprocess"]["target"]["mean"]


def test_a_resumed_run_keeps_the_preprocessing_it_took_from_init_from(toys, tmp_path):
    _run(tmp_path, "first", strategy="meangap", epochs=1)
    # another seed splits the data otherwise: measured again, the specs would differ
    kw = dict(strategy="meangap", epochs=3, seed=2, patience=0, init_from=tmp_path / "first",
              sets=["init_keep_preprocess=true"])
    _run(tmp_path, "whole", **kw)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "cut", on_epoch=stop, **kw)
    galmerge.train(resume=tmp_path / "cut", quiet=True, source=toy_sets()[0],
                   target=toy_sets()[1])
    first = torch.load(tmp_path / "first" / "best.pt", weights_only=True)
    whole, cut = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("whole", "cut"))
    assert cut["preprocess"] == whole["preprocess"] == first["preprocess"]
    for key, value in whole["model"].items():  # bit for bit, as uninterrupted
        assert torch.equal(value, cut["model"][key]), key


def test_init_fresh_strategies_start_their_state_anew(toys, tmp_path):
    _run(tmp_path, "first", strategy="dann")
    first = torch.load(tmp_path / "first" / "best.pt", weights_only=True)["strategy_state"]
    # another seed: a discriminator built anew differs from the first run's, a loaded one not
    runs = {}
    for name, sets in (("loaded", []), ("fresh", ['init_fresh_strategies=["DANN"]'])):
        _run(tmp_path, name, strategy="dann", epochs=1, lr=1e-12, seed=2, sets=sets,
             init_from=tmp_path / "first")
        runs[name] = torch.load(tmp_path / name / "last.pt", weights_only=True)["strategy_state"]
    assert all(torch.allclose(v, runs["loaded"][k], atol=1e-6) for k, v in first.items())
    assert not all(torch.allclose(v, runs["fresh"][k], atol=1e-3) for k, v in first.items())
    config = tomllib.loads((tmp_path / "fresh" / "config.toml").read_text())
    assert config["init_fresh_strategies"] == ["dann"]  # recorded by its canonical name
    with pytest.raises(GalmergeError, match="'fisher' is not a strategy of this run"):
        _run(tmp_path, "bad", strategy="dann", init_from=tmp_path / "first",
             sets=['init_fresh_strategies=["fisher"]'])
    with pytest.raises(GalmergeError, match="init_fresh_strategies must be a list"):
        _run(tmp_path, "bad2", strategy="dann", sets=["init_fresh_strategies=dann"])
    # an adaptation's setting: its source-only stage (strategy none) trains without it
    _run(tmp_path, "staged", strategy="dann", epochs=1, sets=['init_fresh_strategies=["dann"]'])
    assert (tmp_path / "staged" / "source_only" / "best.pt").is_file()
    stage = tomllib.loads((tmp_path / "staged" / "source_only" / "config.toml").read_text())
    assert stage["init_fresh_strategies"] == []


def test_a_last_pt_of_the_old_layout_resumes_bit_for_bit(toys, tmp_path):
    # the layout of runs from before domain_batchnorm existed: joint
    joint = ["domain_batchnorm=joint"]
    reference = _run(tmp_path, "ref", strategy="meangap", epochs=3, patience=0, sets=joint)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "old", strategy="meangap", epochs=3, patience=0, on_epoch=stop,
             sets=joint)
    run = tmp_path / "old"
    # rewrite last.pt and config.toml as the trainer before this layout wrote them
    payload = torch.load(run / "last.pt", weights_only=True)
    ts = payload["training_state"]
    ts["best"] = {k: ts["best"][k] for k in ("value", "epoch", "bad_epochs", "stopped")}
    payload.pop("strategy_state")
    config = tomllib.loads((run / "config.toml").read_text())
    for key in ("lr_multipliers", "stop_by", "early_stopping", "domain_batchnorm",
                "init_keep_preprocess"):
        config.pop(key)
    config["schedule"].pop("kind"), config["schedule"].pop("cycle_length")
    from galmerge.config.resolve import write_toml
    from galmerge.models.model import save_checkpoint

    write_toml(run / "config.toml", config)
    save_checkpoint(run / "last.pt", payload)
    done = galmerge.train(resume=run, quiet=True, source=toy_sets()[0], target=toy_sets()[1])
    assert done["metrics"] == reference["metrics"]
    assert _rows(run) == _rows(tmp_path / "ref") or [
        {k: v for k, v in r.items() if k != "images_per_s"} for r in _rows(run)
    ] == [{k: v for k, v in r.items() if k != "images_per_s"} for r in _rows(tmp_path / "ref")]


def test_resnet18_declares_bottleneck_and_head_at_ten_times(plugin_manager):
    from galmerge.models.model import build_model
    from galmerge.training import optim

    for bottleneck, expected in ((16, {"model.backbone.bottleneck": 10.0, "model.head": 10.0}),
                                 (0, {"model.head": 10.0})):
        model = build_model("resnet18", 3, 32, 2, {"bottleneck": bottleneck})
        named = [(f"model.{n}", p) for n, p in model.named_parameters()]
        declared = optim.declared_multipliers(model, {})
        resolved = optim.resolve_multipliers(declared, {}, [n for n, _ in named])
        assert resolved == expected
        groups = optim.parameter_groups(named, resolved)
        assert [m for m, _ in groups] == [1.0, 10.0]
        assert sum(p.numel() for p in groups[1][1]) == sum(
            p.numel() for n, p in named if n.startswith(("model.backbone.bottleneck", "model.head"))
        )


def test_a_batch_far_beyond_memory_is_refused_before_it_is_allocated(toys, tmp_path):
    """Issue 19 item 11: --batch-size 100000 used to allocate until the kernel killed it."""
    with pytest.raises(GalmergeError, match=r"--batch-size 4000000000: one training step needs "
                                            r"about .* GiB .* use --batch-size \d+ or less"):
        _run(tmp_path, "huge", strategy="adabn", batch_size=4_000_000_000)
    assert not (tmp_path / "huge" / "last.pt").exists()


class _HugeLrNet(nn.Module):
    """A backbone whose declared lr factor puts Adam's step past float32."""

    lr_multipliers = {"": 1e300}

    def __init__(self, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.out_features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class HugeLrPlugin:
    @hookimpl
    def register_backbones(self):
        return [Backbone(name="hugelr", description="test",
                         build=lambda c, s: _HugeLrNet(c, s))]


def test_an_optimizer_step_that_overflows_stops_with_the_non_finite_message(
        toys, register_plugin, tmp_path):
    """The trainer's safety net: torch's overflow RuntimeError in Adam's step becomes the
    one-line non-finite-loss stop, whatever let the step size through validation."""
    register_plugin(HugeLrPlugin(), "hugelr")
    with pytest.raises(GalmergeError, match=r"training stopped: the loss became non-finite .* "
                                            r"epoch 1, step 1; .*try a lower --lr"):
        _run(tmp_path, "huge", backbone="hugelr", epochs=1)


def test_the_overflow_is_recognised_by_its_numbers_whatever_torch_calls_it(
        toys, register_plugin, tmp_path, monkeypatch):
    """Another torch release may word the refusal of a step size past float32 otherwise: the
    trainer tells it by Adam's numbers (lr / (1 - beta1^t) past the dtype), not by the text."""
    register_plugin(HugeLrPlugin(), "hugelr")
    step = torch.optim.Adam.step

    def reworded(self, *args, **kwargs):
        try:
            return step(self, *args, **kwargs)
        except RuntimeError as exc:
            raise RuntimeError("scalar out of range for dtype float32") from exc

    monkeypatch.setattr(torch.optim.Adam, "step", reworded)
    with pytest.raises(GalmergeError, match=r"the loss became non-finite .* epoch 1, step 1"):
        _run(tmp_path, "huge", backbone="hugelr", epochs=1)


def test_an_optimizer_error_of_finite_numbers_is_no_non_finite_loss(toys, tmp_path):
    """An error in the optimiser step at an ordinary lr is not reported as a diverged loss,
    even where its text says 'overflow': it propagates as raised."""

    def fails(optimizer, args, kwargs):
        raise RuntimeError("stack overflow in an optimizer hook")

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(fails)
    try:
        with pytest.raises(RuntimeError, match="stack overflow in an optimizer hook"):
            _run(tmp_path, "hook", epochs=1)
    finally:
        handle.remove()
