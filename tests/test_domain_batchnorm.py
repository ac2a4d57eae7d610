"""Per-domain BatchNorm statistics (`domain_batchnorm = "separate"`, DSBN): training keeps one set
of running statistics per domain, and evaluation, classify and export use the right one."""

from __future__ import annotations

import csv
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import tiny_run, write_pair
from torch import nn

from galmerge.cli import cli
from galmerge.data.splits import domain_splits
from galmerge.io.hdf5 import read_imageset
from galmerge.models import domain_norm
from galmerge.models.inference import forward_in_batches
from galmerge.models.model import load_model, read_checkpoint

SEPARATE = ["domain_batchnorm=separate"]  # the default; spelled out where it matters
JOINT = ["domain_batchnorm=joint"]
SHARED = ["target_encoder=shared"]  # dann's default layout is its own target encoder (ADDA)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dsbn")
    write_pair(root / "data", n=80)
    return {"root": root, "source": root / "data" / "source.h5",
            "target": root / "data" / "target.h5"}


@pytest.fixture(scope="module")
def separate(pair) -> Path:
    run = pair["root"] / "separate"
    tiny_run(run, f"hdf5:{pair['source']}", f"hdf5:{pair['target']}", "adabn", epochs=2,
             sets=SEPARATE)
    return run


def _target_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if ".target_" in k]


def _brier(run: Path, h5: Path, domain: str, stats: str) -> float:
    loaded = load_model(run)
    images = read_imageset(h5)
    seed = int(loaded.config["seed"])
    idx = domain_splits(80, 80, seed)[domain]["test"]
    _, logits = forward_in_batches(loaded.model, images, idx, loaded.preprocess[domain],
                                   domain=stats)
    p = torch.softmax(logits, 1)[:, 1].double().numpy()
    return float(np.mean((p - images.labels.numpy()[idx]) ** 2))


def test_a_separate_run_keeps_target_statistics_and_reports_each_domain_with_its_own(
        pair, separate):
    state = read_checkpoint(separate)["model"]
    keys = _target_keys(state)
    assert keys and all(k.split(".")[-1].startswith("target_") for k in keys)
    means = [k for k in keys if k.endswith("target_running_mean")]
    # the target batches moved their own statistics away from the source's
    assert all(not torch.allclose(state[k], state[k.replace("target_", "")]) for k in means)
    summary = json.loads((separate / "summary.json").read_text())
    metrics = summary["metrics"]
    for domain, h5 in (("source", pair["source"]), ("target", pair["target"])):
        reported = metrics[f"{domain}_test"]["brier"]
        assert _brier(separate, h5, domain, domain) == pytest.approx(reported, abs=1e-6)
    # the source's statistics on target images give another number: the check above can fail
    other = _brier(separate, pair["target"], "target", "source")
    assert other != pytest.approx(metrics["target_test"]["brier"], abs=1e-6)


def _p(path: Path) -> np.ndarray:
    with open(path, newline="") as fh:
        return np.array([float(r["p_merger"]) for r in csv.DictReader(fh)])


def _classify(model: Path, catalog: Path, out: Path, *extra: str) -> np.ndarray:
    res = CliRunner().invoke(cli, ["classify", str(catalog), "--model", str(model), "--output",
                                   str(out), "--device", "cpu", "--quiet", *extra])
    assert res.exit_code == 0, res.output
    return _p(out)


def _reference(run: Path, h5: Path, domain: str, stats: str) -> np.ndarray:
    loaded = load_model(run)
    images = read_imageset(h5)
    _, logits = forward_in_batches(loaded.model, images, np.arange(len(images)),
                                   loaded.preprocess[domain], domain=stats)
    return torch.softmax(logits / loaded.temperature, 1)[:, 1].numpy()


def _target_outputs_agree(run: Path, pair, tmp_path: Path) -> np.ndarray:
    """classify --domain target gives the model's own target forward, and the exported ONNX
    model the same; returns those probabilities."""
    on_target = _classify(run, pair["target"], tmp_path / "t.csv", "--domain", "target")
    np.testing.assert_allclose(on_target, _reference(run, pair["target"], "target", "target"),
                               atol=1e-4)
    onnx = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["export", str(run), "--output", str(onnx)])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(_classify(onnx, pair["target"], tmp_path / "o.csv"), on_target,
                               atol=1e-4)
    return on_target


def test_classify_and_export_use_the_statistics_of_the_domain_asked_for(pair, separate, tmp_path):
    on_target = _target_outputs_agree(separate, pair, tmp_path)
    wrong = _reference(separate, pair["target"], "target", "source")
    assert np.abs(on_target - wrong).max() > 1e-3  # the two sets give different answers
    on_source = _classify(separate, pair["source"], tmp_path / "s.csv", "--domain", "source")
    np.testing.assert_allclose(on_source, _reference(separate, pair["source"], "source", "source"),
                               atol=1e-4)


def test_joint_and_source_only_runs_keep_one_set(pair):
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    none = pair["root"] / "none-separate"
    tiny_run(none, src, tgt, "none", epochs=1, max_steps_per_epoch=2, sets=SEPARATE)
    joint = pair["root"] / "joint"
    tiny_run(joint, src, tgt, "adabn", epochs=1, max_steps_per_epoch=2, sets=JOINT)
    for run in (none, joint):
        assert not _target_keys(read_checkpoint(run)["model"])


def test_init_from_carries_statistics_across_joint_and_separate(pair, separate, tmp_path):
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    joint = tmp_path / "joint-from-separate"
    tiny_run(joint, src, tgt, "adabn", epochs=1, max_steps_per_epoch=1,
             sets=[f"init_from={separate / 'best.pt'}", *JOINT])
    assert not _target_keys(read_checkpoint(joint)["model"])
    again = tmp_path / "separate-from-joint"
    tiny_run(again, src, tgt, "adabn", epochs=1, max_steps_per_epoch=1,
             sets=[f"init_from={joint / 'best.pt'}", *SEPARATE])
    assert _target_keys(read_checkpoint(again)["model"])


def test_the_statistics_block_swaps_back_even_on_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert domain_norm.add_target_statistics(model) == 1
    bn = model[1]
    bn.target_running_mean.fill_(5.0)
    with pytest.raises(RuntimeError, match="boom"), domain_norm.statistics(model, "target"):
        assert float(bn.running_mean[0]) == 5.0
        raise RuntimeError("boom")
    assert float(bn.running_mean[0]) == 0.0 and float(bn.target_running_mean[0]) == 5.0
    with pytest.raises(ValueError, match="use one of source, target"), \
            domain_norm.statistics(model, "survey"):
        pass
    assert domain_norm.select_statistics(model, "target")
    assert float(bn.running_mean[0]) == 5.0 and not domain_norm.has_target_statistics(model)


def test_class_weighted_mmd_trains_logs_its_estimate_and_keeps_it(pair, tmp_path):
    run = tmp_path / "cw"
    tiny_run(run, f"hdf5:{pair['source']}", f"hdf5:{pair['target']}", "mmd", epochs=1,
             max_steps_per_epoch=3, sets=[*SEPARATE, "mmd.class_weights=estimated"])
    with open(run / "metrics.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    share = float(row["diag_target_prior"])
    assert 0.0 < share < 1.0  # the running estimate of the target's merger share, logged
    state = read_checkpoint(run)["strategy_state"]
    assert 0.0 < float(state["mmd.target_prior"][1]) < 1.0


def test_a_separate_run_from_before_per_domain_statistics_resumes(pair, tmp_path):
    """last.pt of a "separate" run written before stop 23 holds one set of statistics: resume
    starts the target's set from it instead of refusing the checkpoint."""
    import galmerge
    from galmerge.models.model import save_checkpoint

    run = tmp_path / "old-separate"

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_run(run, f"hdf5:{pair['source']}", f"hdf5:{pair['target']}", "adabn", epochs=2,
                 max_steps_per_epoch=2, sets=SEPARATE, on_epoch=stop)
    payload = torch.load(run / "last.pt", weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if ".target_" not in k}
    save_checkpoint(run / "last.pt", payload)
    galmerge.train(resume=run, quiet=True)
    assert _target_keys(read_checkpoint(run / "last.pt")["model"])


def test_specific_runs_train_target_affine_parameters_and_every_output_uses_them(pair, tmp_path):
    """domain_batchnorm=specific (DSBN's full form): the dann term trains the target's own
    BatchNorm affine parameters; evaluation, classify --domain target and export use them."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    run = tmp_path / "specific"
    tiny_run(run, src, tgt, "dann", epochs=2, sets=["domain_batchnorm=specific", *SHARED])
    state = read_checkpoint(run)["model"]
    weights = [k for k in state if k.endswith(".target_weight")]
    assert weights and all(k.replace(".target_weight", ".target_bias") in state for k in weights)
    # trained apart from the source's (the copies they started as would be equal)
    assert any(not torch.allclose(state[k], state[k.replace("target_", "")]) for k in weights)
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    for domain, h5 in (("source", pair["source"]), ("target", pair["target"])):
        reported = metrics[f"{domain}_test"]["brier"]
        assert _brier(run, h5, domain, domain) == pytest.approx(reported, abs=1e-6)
    _target_outputs_agree(run, pair, tmp_path)
    # init_from a specific run: a separate model drops the target affine parameters, a
    # specific one keeps them
    sep = tmp_path / "separate-from-specific"
    tiny_run(sep, src, tgt, "dann", epochs=1, max_steps_per_epoch=1,
             sets=[f"init_from={run / 'best.pt'}", *SEPARATE, *SHARED])
    kept = read_checkpoint(sep)["model"]
    assert _target_keys(kept) and not [k for k in kept if k.endswith(".target_weight")]
    spec = tmp_path / "specific-from-separate"
    tiny_run(spec, src, tgt, "dann", epochs=1, max_steps_per_epoch=1,
             sets=[f"init_from={sep / 'best.pt'}", "domain_batchnorm=specific", *SHARED])
    assert [k for k in read_checkpoint(spec)["model"] if k.endswith(".target_weight")]


def test_target_affine_parameters_swap_with_the_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    domain_norm.add_target_statistics(model, affine=True)
    bn = model[1]
    with torch.no_grad():
        bn.target_weight.fill_(3.0)
    source_weight = bn.weight
    with domain_norm.statistics(model, "target"):
        assert float(bn.weight.detach()[0]) == 3.0
    assert bn.weight is source_weight
    assert domain_norm.select_statistics(model, "target")
    assert float(bn.weight.detach()[0]) == 3.0
    assert "target_weight" not in dict(model.named_parameters())


def test_a_separate_target_encoder_leaves_the_source_path_to_the_source_loss(pair, tmp_path):
    """target_encoder=separate (ADDA's layout, started from a source-only run): with one-sided
    alignment the adversary trains the target's own encoder only, so the source encoder and the
    head end bit for bit where they end with the adversary's weight at 0; a shared encoder does
    not. Evaluation, classify --domain target and export use the target encoder."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    base = tmp_path / "none"
    tiny_run(base, src, tgt, "none", epochs=1, max_steps_per_epoch=3)
    adda = ["dann.align=target", f"init_from={base / 'best.pt'}"]

    def last(layout: str, weight: float) -> dict[str, torch.Tensor]:
        run = tmp_path / f"{layout}-{weight}"
        tiny_run(run, src, tgt, "dann", epochs=2, max_steps_per_epoch=4,
                 sets=[*adda, f"target_encoder={layout}", f"dann.weight={weight}"])
        return read_checkpoint(run / "last.pt")["model"]

    def source_path(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if ".target_" not in k}

    adapted, still = last("separate", 0.3), last("separate", 0.0)
    assert domain_norm.state_has_target_encoder(adapted)
    convs = [k for k in adapted if k.endswith(".target_weight") and adapted[k].dim() == 4]
    assert convs and any(not torch.equal(adapted[k], still[k]) for k in convs)
    for key, value in source_path(still).items():
        assert torch.equal(adapted[key], value), key
    shared, shared_still = last("shared", 0.3), last("shared", 0.0)
    assert not domain_norm.state_has_target_encoder(shared)
    assert any(not torch.equal(shared[k], v) for k, v in source_path(shared_still).items())
    run = tmp_path / "separate-0.3"
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    for domain, h5 in (("source", pair["source"]), ("target", pair["target"])):
        assert _brier(run, h5, domain, domain) == pytest.approx(
            metrics[f"{domain}_test"]["brier"], abs=1e-6)
    _target_outputs_agree(run, pair, tmp_path)


def test_a_frozen_source_path_stays_at_its_start(pair, tmp_path):
    """source_path=frozen (ADDA as Tzeng et al. 2017 wrote it): after training, every
    parameter and running statistic of the source path (source encoder, head) is the start's
    bit for bit, the target's encoder moved, and the run's source test metrics are the
    start's; config.toml records the setting."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    base = tmp_path / "none"
    tiny_run(base, src, tgt, "none", epochs=1, max_steps_per_epoch=3)
    run = tmp_path / "frozen"
    tiny_run(run, src, tgt, "dann", epochs=2, max_steps_per_epoch=4,
             sets=[f"init_from={base / 'best.pt'}", "source_path=frozen"])
    start = read_checkpoint(base / "best.pt")["model"]
    end = read_checkpoint(run / "last.pt")["model"]
    assert domain_norm.state_has_target_encoder(end) and not _target_keys(start)
    for key, value in start.items():
        assert torch.equal(end[key], value), key
    convs = [k for k in end if k.endswith(".target_weight") and end[k].dim() == 4]
    assert convs and any(not torch.equal(end[k], start[k.replace(".target_", ".")])
                         for k in convs)
    metrics = {r: json.loads((r / "summary.json").read_text())["metrics"]["source_test"]
               for r in (base, run)}
    assert metrics[run]["accuracy"] == metrics[base]["accuracy"]
    assert metrics[run]["brier"] == pytest.approx(metrics[base]["brier"], abs=1e-9)
    assert 'source_path = "frozen"' in (run / "config.toml").read_text()


@pytest.mark.parametrize("sets", [["--strategy", "none"],
                                  ["--strategy", "dann", "--set", "target_encoder=shared"],
                                  ["--strategy", "fisher", "--set", "target_encoder=separate"]])
def test_a_frozen_source_path_needs_a_target_encoder_that_trains(pair, sets, tmp_path):
    res = CliRunner().invoke(cli, [
        "train", "--source", f"hdf5:{pair['source']}", "--target", f"hdf5:{pair['target']}",
        "--epochs", "1", "--run-dir", str(tmp_path / "r"), "--quiet",
        "--set", "source_path=frozen", *sets])
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1].startswith("Error: source_path=frozen needs")
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize("strategy", ["entropy", "mmd", "coral"])
def test_every_target_term_trains_only_the_targets_own_encoder(pair, strategy, tmp_path):
    """With its own target encoder, a term on the target's logits (entropy, SHOT's frozen
    hypothesis) or features (mmd, coral: align auto is one-sided) leaves the source encoder and
    the shared head bit for bit where the term's weight 0 leaves them."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    base = tmp_path / "none"
    tiny_run(base, src, tgt, "none", epochs=1, max_steps_per_epoch=3)

    def last(weight: float) -> dict[str, torch.Tensor]:
        run = tmp_path / f"{strategy}-{weight}"
        tiny_run(run, src, tgt, strategy, epochs=2, max_steps_per_epoch=4,
                 sets=[f"init_from={base / 'best.pt'}", "target_encoder=separate",
                       f"{strategy}.weight={weight}", f"{strategy}.warmup=0"])
        return read_checkpoint(run / "last.pt")["model"]

    adapted, still = last(1.0), last(0.0)
    moved = [k for k in adapted if ".target_" in k and not torch.equal(adapted[k], still[k])]
    assert moved  # the term trained the target's encoder
    for key, value in still.items():
        if ".target_" not in key:
            assert torch.equal(adapted[key], value), key


def test_a_separate_target_encoder_needs_per_domain_batches(pair, tmp_path):
    res = CliRunner().invoke(cli, [
        "train", "--source", f"hdf5:{pair['source']}", "--target", f"hdf5:{pair['target']}",
        "--strategy", "dann", "--epochs", "1", "--run-dir", str(tmp_path / "r"), "--quiet",
        "--set", "target_encoder=separate", "--set", "domain_batchnorm=joint"])
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1].startswith("Error: target_encoder=separate")
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


def test_a_separate_target_encoder_without_init_from_trains_its_source_stage_first(
        pair, tmp_path):
    """One command is ADDA: the source-only stage is trained in RUN_DIR/source_only (continued
    there after a kill), and the adaptation starts from its best.pt."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    direct = tmp_path / "none"
    tiny_run(direct, src, tgt, "none", epochs=2, max_steps_per_epoch=2)
    run = tmp_path / "adda"

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # what a kill during the stage leaves behind
        tiny_run(run / "source_only", src, tgt, "none", epochs=2, max_steps_per_epoch=2,
                 on_epoch=stop)
    res = CliRunner().invoke(cli, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code != 0 and "stopped during its source-only stage" in res.output
    assert "(no --resume)" in res.output and "Traceback" not in res.output
    adda = ["target_encoder=separate", "dann.align=target"]
    tiny_run(run, src, tgt, "dann", epochs=2, max_steps_per_epoch=2, sets=adda)
    stage = run / "source_only" / "best.pt"
    assert read_checkpoint(run)["config"]["init_from"] == str(stage)
    for key, value in read_checkpoint(direct)["model"].items():
        assert torch.equal(read_checkpoint(stage)["model"][key], value), key
    res = CliRunner().invoke(cli, [
        "train", "--source", src, "--target", tgt, "--strategy", "dann", "--epochs", "1",
        "--run-dir", str(run), "--quiet", "--set", adda[0], "--set", adda[1]])
    assert res.exit_code != 0 and "is not empty" in res.output.strip().splitlines()[-1]
    # a stage left by another command (here another seed) is refused, not silently reused
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run / "source_only", other / "source_only")
    res = CliRunner().invoke(cli, [
        "train", "--source", src, "--target", tgt, "--strategy", "dann", "--epochs", "2",
        "--max-steps-per-epoch", "2", "--batch-size", "8", "--seed", "5", "--run-dir",
        str(other), "--quiet", "--set", adda[0], "--set", adda[1]])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "with seed = 0, not 5" in res.output.strip().splitlines()[-1]


def test_a_runs_config_with_another_seed_trains_its_own_source_stage(pair, tmp_path):
    """config.toml records the run's own stage as init_from; `train --config it --seed 2` must
    not start seed 2 from seed 0's source model (the seeds' spread would be understated)."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    adda = ["target_encoder=separate", "dann.align=target"]
    first = tmp_path / "s0"
    tiny_run(first, src, tgt, "dann", epochs=1, max_steps_per_epoch=2, sets=adda)
    base = ["train", "--config", str(first / "config.toml"), "--quiet"]
    res = CliRunner().invoke(cli, [*base, "--seed", "2", "--run-dir", str(tmp_path / "s2")])
    assert res.exit_code == 0, res.output
    own = tmp_path / "s2" / "source_only" / "best.pt"
    assert read_checkpoint(tmp_path / "s2")["config"]["init_from"] == str(own)
    assert read_checkpoint(own)["config"]["seed"] == 2
    # the same settings: the stage is the same model, so it is reused, not trained again
    res = CliRunner().invoke(cli, [*base, "--run-dir", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "again" / "source_only").exists()
    assert read_checkpoint(tmp_path / "again")["config"]["init_from"] == str(
        first / "source_only" / "best.pt")
    # another schedule is another stage too (its own, not the one trained with the old one)
    res = CliRunner().invoke(cli, [*base, "--set", "schedule.pct_start=0.6", "--run-dir",
                                   str(tmp_path / "pct")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pct" / "source_only" / "best.pt").is_file()


def test_a_runs_config_read_from_another_folder_starts_from_its_stage_also_after_a_move(
        pair, tmp_path, monkeypatch):
    """config.toml records the stage as an absolute init_from (a relative --run-dir made it
    relative to where the run was started, so that read from elsewhere the run trained a stage
    of its own): read from another folder the run starts from it; after the run moved, its own
    stage is where it is now (env.json's run_dir says where it was)."""
    import shutil

    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    monkeypatch.chdir(tmp_path)
    tiny_run(Path("rel"), src, tgt, "dann", epochs=1, max_steps_per_epoch=2,
             sets=["target_encoder=separate", "dann.align=target"])
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    res = CliRunner().invoke(cli, ["train", "--config", "../rel/config.toml", "--run-dir",
                                   "out", "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "sub" / "out" / "source_only").exists()
    assert tomllib.loads((tmp_path / "sub" / "out" / "config.toml").read_text())[
        "init_from"] == str(tmp_path / "rel" / "source_only" / "best.pt")
    shutil.move(tmp_path / "rel", tmp_path / "sub" / "rel")
    res = CliRunner().invoke(cli, ["train", "--config", "rel/config.toml", "--run-dir",
                                   "out2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "sub" / "out2" / "source_only").exists()
    assert tomllib.loads((tmp_path / "sub" / "out2" / "config.toml").read_text())[
        "init_from"] == str(tmp_path / "sub" / "rel" / "source_only" / "best.pt")


def test_alignment_strategies_default_to_their_own_target_encoder_and_others_keep_one():
    """target_encoder "auto": separate when every target-reading strategy's record asks for it
    (dann's, mmd's, coral's and entropy's), recorded as such; shared beside another
    target-reading term, for joint batches and for the presets."""
    from galmerge.config.resolve import resolve_config
    from galmerge.plugin.manager import get_plugin_manager

    def layout(strategy: str, **extra) -> str:
        return resolve_config(cli={"strategy": strategy, "source": "synthetic:illustris",
                                   "target": "synthetic:sdss", **extra})["target_encoder"]

    for name in ("dann", "mmd", "coral", "entropy"):
        assert get_plugin_manager().get("strategies", name).target_encoder == "separate"
    assert layout("dann") == layout("dann+fisher") == "separate"  # fisher reads no target
    assert layout("mmd") == layout("mmd+fisher+entropy") == "separate"
    assert layout("dann+adabn") == layout("adabn") == layout("none") == "shared"
    assert layout("dann", domain_batchnorm="joint") == "shared"
    assert layout("dann", preset="deepmerge2-sim-real") == "shared"
    assert layout("dann", target_encoder="shared") == "shared"
    from galmerge.plugin.strategy_api import StrategyContext

    def align(encoder: str, **options) -> str:
        context = StrategyContext(feature_dim=8, num_classes=2, total_steps=10,
                                  device=torch.device("cpu"), target_encoder=encoder)
        return get_plugin_manager().get("strategies", "dann").build(context, options).align

    assert (align("separate"), align("shared")) == ("target", "both")  # align "auto"
    assert align("separate", align="both") == "both"


def test_select_by_auto_follows_the_target_encoder():
    """select_by "auto" (stop 32): "im" for a run with its own target encoder, whose adaptation
    the source validation loss cannot see; the source validation loss otherwise; a name given
    is kept; the resolved config records the name."""
    from galmerge.config.resolve import resolve_config

    def select(strategy: str, **extra) -> str:
        return resolve_config(cli={"strategy": strategy, "source": "synthetic:illustris",
                                   "target": "synthetic:sdss", **extra})["select_by"]

    assert select("dann") == select("mmd+fisher+entropy") == select("coral") == "im"
    assert select("none") == select("adabn") == select("dann+adabn") == "source_val_loss"
    assert select("dann", target_encoder="shared") == "source_val_loss"
    assert select("dann", preset="deepmerge2-sim-real") == "source_val_accuracy"  # the paper's
    assert select("dann", select_by="source_val_loss") == "source_val_loss"
    assert select("none", select_by="auto") == "source_val_loss"


def test_a_default_dann_run_is_adda(pair, tmp_path):
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    run = tmp_path / "dann"
    tiny_run(run, src, tgt, "dann", epochs=1, max_steps_per_epoch=2)
    config = read_checkpoint(run)["config"]
    assert config["target_encoder"] == "separate"
    assert config["select_by"] == "im"  # the stage itself chose on the source validation loss
    assert read_checkpoint(run / "source_only")["config"]["select_by"] == "source_val_loss"
    assert config["init_from"] == str(run / "source_only" / "best.pt")
    assert (run / "source_only" / "summary.json").is_file()
    assert domain_norm.state_has_target_encoder(read_checkpoint(run)["model"])
    # evaluate's source-only baseline is the stage the run started from
    from galmerge.evaluation.pipeline import find_baseline

    assert find_baseline(run) == run / "source_only"


def test_adabn_with_a_frozen_source_path_moves_only_the_targets_statistics(pair, tmp_path):
    """AdaBN as Li et al. 2016 wrote it: the target's own encoder starts from the source-only
    model and nothing trains it (adabn has no term, the source path is frozen), so its weights
    stay the source's, its BatchNorm running statistics become the target's, and the source
    path and its metrics are the start's."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    base = tmp_path / "none"
    tiny_run(base, src, tgt, "none", epochs=1, max_steps_per_epoch=3)
    run = tmp_path / "adabn"
    tiny_run(run, src, tgt, "adabn", epochs=1, max_steps_per_epoch=3,
             sets=[f"init_from={base / 'best.pt'}", "target_encoder=separate",
                   "source_path=frozen"])
    start = read_checkpoint(base / "best.pt")["model"]
    end = read_checkpoint(run / "last.pt")["model"]
    for key, value in start.items():
        assert torch.equal(end[key], value), key
    weights = [k for k in end if k.endswith((".target_weight", ".target_bias"))]
    means = [k for k in end if k.endswith(".target_running_mean")]
    assert weights and means
    for key in weights:
        assert torch.equal(end[key], start[key.replace(".target_", ".")]), key
    assert all(not torch.equal(end[k], start[k.replace(".target_", ".")]) for k in means)
    metrics = {r: json.loads((r / "summary.json").read_text())["metrics"] for r in (base, run)}
    assert metrics[run]["source_test"] == metrics[base]["source_test"]
    assert metrics[run]["target_test"] != metrics[base]["target_test"]


def test_a_killed_stage_of_a_backbone_with_declared_multipliers_is_continued(pair, tmp_path):
    """resnet18 declares learning-rate multipliers, which its stage's config.toml records as
    filled in: what a run writes beyond its settings must not make its own stage 'another'."""
    src, tgt = f"hdf5:{pair['source']}", f"hdf5:{pair['target']}"
    run = tmp_path / "adda"

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_run(run / "source_only", src, tgt, "none", epochs=2, max_steps_per_epoch=2,
                 on_epoch=stop, backbone="resnet18")
    tiny_run(run, src, tgt, "dann", epochs=2, max_steps_per_epoch=2, backbone="resnet18",
             sets=["target_encoder=separate", "dann.align=target"])
    assert (run / "summary.json").is_file() and (run / "source_only" / "summary.json").is_file()
