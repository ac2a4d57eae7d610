"""Invalid values for every command's options: non-zero exit, one line on stderr, no traceback,
nothing written. A table of (command line, what the error must name); configs as real files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from galmerge.cli import cli

SRC = ["--source", "synthetic:illustris?n=16", "--target", "synthetic:sdss?n=16"]

TRAIN_CASES = [
    (["--backbone-option", "dropout"], "e.g. --backbone-option dropout=0.3"),
    (["--lr", "inf"], "lr"),
    (["--lr", "nan"], "lr"),
    (["--lr", "-1"], "lr"),
    (["--seed", str(10**23)], "seed"),
    (["--epochs", "0"], "epochs"),
    (["--batch-size", "-3"], "batch_size"),
    (["--weight-decay", "inf"], "weight_decay"),
    (["--set", "schedule.div_factor=0"], "schedule.div_factor"),
    (["--set", "schedule.final_div_factor=-1"], "schedule.final_div_factor"),
    (["--set", "schedule.pct_start=5"], "schedule.pct_start"),
    (["--set", "optimizer.eps=-1"], "optimizer.eps"),
    (["--set", "optimizer.betas=[0.9, 2]"], "optimizer.betas"),
    (["--set", "optimizer.amsgrad=3"], "optimizer.amsgrad"),
    (["--set", "schedule.pct_start=\"x\""], "schedule.pct_start"),
    # finite but past float32 in Adam's step: a torch traceback and a half-written run dir
    (["--lr", "1e308"], "lr must be at most 10, got 1e+308; a typical value is 1e-3"),
    (["--weight-decay", "1e308"], "weight_decay must be at most 1000"),
    (["--set", "schedule.div_factor=1e-300"], "schedule.div_factor must be at least 0.001"),
    (["--set", "schedule.final_div_factor=1e-300"], "schedule.final_div_factor must be at least"),
    (["--set", "lr_multipliers.model=1e308"], "lr_multipliers.model must be a number from 0 to"),
    (["--backbone", "resnet18", "--backbone-option", "lr_mult=1e308"], "lr_mult"),
    # an alias and its strategy: the run recorded dann+dann, which no later run could read
    (["--strategy", "ada+dann"],
     "strategy expression 'ada+dann' names dann twice ('ada' is an alias of 'dann'); keep one"),
    (["--strategy", "dann+fisher+ada"], "('ada' is an alias of 'dann'); keep one"),
    # one option under an alias and its strategy's name: the later in table order won, unsaid
    (["--strategy", "dann", "--set", "ada.weight=1", "--set", "dann.weight=2"],
     "the command line sets ada.weight = 1 and dann.weight = 2, one strategy (dann) under two "
     "names; keep one"),
    # an explicit empty value was taken as "left out" (no preset, auto), unsaid
    (["--preset", ""], "--preset '': give a preset name"),
    (["--device", ""], "--device '': give auto, cpu"),
    # torch's names galmerge cannot train on: an AssertionError and a RuntimeError traceback
    (["--device", "xpu"], "unknown --device 'xpu'; use auto, cpu, cuda, cuda:N"),
    (["--device", "meta"], "unknown --device 'meta'; use auto, cpu, cuda, cuda:N"),
    # found while building the run (after the data is loaded): still the only line on stderr
    (["--batch-size", "4000000000"], "--batch-size 4000000000: one training step needs"),
]

CONFIG_CASES = [
    ("seed = 1e23\n", "seed"),
    ("seed = 100000000000000000000\n", "seed"),
    ("backbone_options = 3\n", "backbone_options"),
    ("[schedule]\npct_start = 5\n", "pct_start"),
    ("[schedule]\ndiv_factor = 0\n", "div_factor"),
    ("[optimizer]\neps = -1\n", "eps"),
    ("lr = inf\n", "lr"),
    ("compile = \"yes\"\n", "compile"),
    ("strategies = 1\n", "strategies"),
    ("epochs = true\n", "epochs"),
    ("lr_multipliers = [1]\n", "lr_multipliers must be a table"),
    ("device = \"xpu\"\n", "unknown --device 'xpu'"),
    # an empty device was taken as auto, unsaid
    ("device = \"\"\n", "--device '': give auto, cpu"),
    ("device = \" \"\n", "--device ' ': give auto, cpu"),
    ("lr = 1e308\n", "lr must be at most 10"),
    ("[observe]\nfield_rate = 0.5\n",
     "observe.field_rate applies with observe.field = \"target\" only"),
    ("[observe]\nfield_scale = 2\n", "observe.field_scale applies with observe.field"),
    ("strategy = \"dann\"\n[strategies.ada]\nweight = 1\n[strategies.dann]\nweight = 2\n",
     "sets ada.weight = 1 and dann.weight = 2, one strategy (dann) under two names; keep one"),
    ("weight_decay = 1e308\n", "weight_decay must be at most"),
    ("[schedule]\ndiv_factor = 1e-300\n", "schedule.div_factor must be at least"),
    ("[schedule]\nfinal_div_factor = 1e-300\n", "schedule.final_div_factor must be at least"),
    ("[lr_multipliers]\nmodel = 1e308\n", "lr_multipliers.model must be a number from 0 to"),
]


def _one_line_failure(result, needle: str) -> None:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert needle in lines[0] and "Traceback" not in result.output, result.output


def _untouched(tmp: Path, before: set[str]) -> None:
    after = {str(p.relative_to(tmp)) for p in tmp.rglob("*")}
    assert after == before, sorted(after - before)


@pytest.mark.parametrize(("args", "needle"), TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_train_refuses_bad_values_in_one_line(tmp_path, args, needle):
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(cli, ["train", *SRC, "--run-dir", str(tmp_path / "run"),
                                      "--quiet", *args])
    _one_line_failure(result, needle)
    # the only trace a refused train may leave is its run directory's (hidden) lock file
    _untouched(tmp_path, before | ({".run.train.lock"} & {p.name for p in tmp_path.iterdir()}))


@pytest.mark.parametrize(("text", "needle"), CONFIG_CASES, ids=[t for t, _ in CONFIG_CASES])
def test_train_refuses_bad_config_files_in_one_line(tmp_path, text, needle):
    (tmp_path / "c.toml").write_text(text)
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(cli, ["train", *SRC, "--run-dir", str(tmp_path / "run"),
                                      "--quiet", "--config", str(tmp_path / "c.toml")])
    _one_line_failure(result, needle)
    _untouched(tmp_path, before)


def test_binary_and_unreadable_config_files_are_one_line(tmp_path):
    (tmp_path / "b.toml").write_bytes(bytes(range(256)) * 4)
    result = CliRunner().invoke(cli, ["train", *SRC, "--config", str(tmp_path / "b.toml")])
    _one_line_failure(result, "b.toml")
    if os.geteuid() != 0:  # root reads any file
        (tmp_path / "u.toml").write_text("seed = 1\n")
        (tmp_path / "u.toml").chmod(0)
        result = CliRunner().invoke(cli, ["train", *SRC, "--config", str(tmp_path / "u.toml")])
        _one_line_failure(result, "u.toml")



@pytest.mark.parametrize("where", ["output", "cache", "run-dir", "data"])
def test_paths_under_a_regular_file_are_one_line(tmp_path, monkeypatch, where):
    """A path whose folder is a file (root ignores permissions; this fails for everyone)."""
    from test_classify import CASJOBS, StampsSurvey, make_checkpoint

    from galmerge.plugin.manager import get_plugin_manager

    (tmp_path / "cat.csv").write_text(CASJOBS)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    (tmp_path / "afile").write_text("x\n")
    bad = str(tmp_path / "afile" / "x")
    if where == "run-dir":
        args = ["train", *SRC, "--quiet", "--epochs", "1", "--run-dir", bad]
    else:
        get_plugin_manager().register(StampsSurvey(), name="stamps-test")
        args = ["classify", str(tmp_path / "cat.csv"), "--model", str(ckpt), "--survey",
                "stamps", "--quiet"]
        if where == "output":
            args += ["--output", bad + ".csv"]
        elif where == "cache":
            args += ["--cache", bad + ".h5", "--output", str(tmp_path / "o.csv")]
        else:
            monkeypatch.setenv("GALMERGE_DATA", bad)
            args += ["--output", str(tmp_path / "o.csv")]
    monkeypatch.chdir(tmp_path)
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(cli, args)
    _one_line_failure(result, "afile")
    # the output's lock file (kept, like pip's and git's) is the one thing a refused run leaves
    _untouched(tmp_path, before | ({".o.csv.lock"} if where in ("cache", "data") else set()))


def _other_command_cases(tmp: Path, ckpt: Path, cat: Path) -> list[tuple[list[str], str]]:
    c = ["classify", str(cat), "--model", str(ckpt), "--survey", "stamps", "--quiet",
         "--output", str(tmp / "o.csv")]
    evaluated = tmp / "evaluated"  # a run directory evaluate takes: config.toml and best.pt
    evaluated.mkdir()
    (evaluated / "config.toml").write_text('strategy = "none"\n')
    (evaluated / "best.pt").write_bytes(ckpt.read_bytes())
    return [
        # silently taken: one column for RA and Dec, CSV under a .txt name, the model itself
        # as its own embedding baseline
        (["classify", str(cat), "--model", str(ckpt), "--survey", "stamps", "--quiet",
          "--ra-col", "dec", "--output", str(tmp / "o.csv")],
         "--ra-col and --dec-col both name column 'dec'"),
        (["classify", str(cat), "--model", str(ckpt), "--survey", "stamps", "--quiet",
          "--output", str(tmp / "o.txt")], "classify writes .csv, .h5, .fits or .parquet"),
        (["evaluate", str(evaluated), "--baseline", str(evaluated)],
         "is the model evaluated itself"),
        (["evaluate", str(evaluated), "--baseline", str(evaluated / "best.pt")],
         "is the model evaluated itself"),
        (["presets", "--strategy", "dann++"], "give the preset's NAME too"),
        (["presets", "--backbone", "nosuch"], "give the preset's NAME too"),
        ([*c, "--threshold", "2"], "--threshold"),
        ([*c, "--threshold", "nan"], "--threshold"),
        ([*c, "--batch-size", "0"], "--batch-size"),
        ([*c, "--workers", "0"], "--workers"),
        ([*c, "--chunk-rows", "-1"], "--chunk-rows"),
        ([*c, "--domain", "nowhere"], "--domain"),
        # unbounded: a typo of N (1e9) ran for days, its memory growing
        ([*c, "--mc-dropout", "1001"],
         "--mc-dropout must be a whole number of passes from 2 to 1000"),
        ([*c, "--device", "meta"], "unknown --device 'meta'"),
        # checked before the HATS-folder and ONNX branches too (a folder: HATS's Dask workers
        # met it first; an .onnx model never)
        (["classify", str(tmp), "--model", str(ckpt), "--device", "xpu"],
         "unknown --device 'xpu'"),
        (["classify", str(cat), "--model", str(tmp / "m.onnx"), "--device", "meta"],
         "unknown --device 'meta'"),
        (["classify", str(tmp / "missing.csv"), "--model", str(ckpt)], "missing.csv"),
        (["classify", str(cat), "--model", str(tmp / "nope.pt")], "nope.pt"),
        (["classify", str(cat), "--model", str(cat), "--quiet"], "cat.csv"),
        (["classify", str(cat), "--model", str(ckpt), "--survey", "nosuchsurvey"],
         "nosuchsurvey"),
        (["classify", str(cat), "--model", str(ckpt), "--output", str(cat / "o.csv")],
         "is a file, not a folder"),
        (["evaluate", str(tmp / "no-run")], "no-run"),
        (["evaluate", str(tmp / "run"), "--embedding-points", "-5"], "--embedding-points"),
        (["reproduce", "deepmerge2", "--bootstrap", "-1"], "--bootstrap"),
        (["reproduce", "deepmerge2", "--experiment", "sim-sim", "--device", "xpu",
          "--out", str(tmp / "rp")], "unknown --device 'xpu'"),
        (["compare", str(tmp / "nothing-*")], "no run directory"),
        (["compare", str(tmp), "--output", str(tmp / "t.txt")], ".md or .csv"),
        (["preview", "nosuchsurvey", "-o", str(tmp / "p.png")], "nosuchsurvey"),
        (["list", "gadgets"], "gadgets"),
        (["presets", "deepmerge2-sim-sim", "--strategy", "ada+dann"],
         "('ada' is an alias of 'dann'); keep one"),
        (["presets", "synthetic-sim-real", "--strategy", "dann+ada"],
         "('ada' is an alias of 'dann'); keep one"),
    ]


def test_other_commands_refuse_bad_values_in_one_line(tmp_path, monkeypatch):
    from test_classify import CASJOBS, StampsSurvey, make_checkpoint

    from galmerge.plugin.manager import get_plugin_manager

    (tmp_path / "cat.csv").write_text(CASJOBS)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    get_plugin_manager().register(StampsSurvey(), name="stamps-test")
    monkeypatch.chdir(tmp_path)
    for args, needle in _other_command_cases(tmp_path, ckpt, tmp_path / "cat.csv"):
        before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
        result = CliRunner().invoke(cli, args)
        assert result.exit_code not in (0, None), (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (args, repr(result.exception))
        assert "Traceback" not in result.output
        assert needle in result.output, (args, result.output)
        # click's usage errors print a usage line and a hint; galmerge's own errors one line
        lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 or result.exit_code == 2, (args, result.output)
        after = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
        # the only trace a refused classify may leave is its output's (hidden) lock file
        new = {n for n in after - before if not (n.startswith(".") and n.endswith(".lock"))}
        assert not new, (args, sorted(new))


def _device_cases(tmp: Path) -> list[list[str]]:
    """Every command that takes --device, otherwise valid enough to reach it; its files need
    not exist, as the device is refused before anything is read."""
    return [
        ["train", *SRC, "--run-dir", str(tmp / "run"), "--quiet"],
        ["tune", *SRC, "--strategy", "none", "--n-trials", "1", "--study-dir", str(tmp / "s")],
        ["classify", str(tmp / "cat.csv"), "--model", str(tmp / "run"), "--quiet"],
        ["evaluate", str(tmp / "run")],
        ["fraction", str(tmp / "o.csv"), "--model", str(tmp / "run")],
        ["reproduce", "deepmerge2", "--experiment", "sim-sim", "--out", str(tmp / "rp")],
    ]


@pytest.mark.parametrize("device", ["", "  "])
def test_every_command_refuses_an_empty_device_in_one_line(tmp_path, device):
    """Once only train refused --device ''; the others took it as auto, unsaid."""
    for args in _device_cases(tmp_path):
        result = CliRunner().invoke(cli, [*args, "--device", device])
        _one_line_failure(result, f"--device {device!r}: give auto, cpu, cuda")
        assert not any(tmp_path.iterdir()), (args, sorted(tmp_path.rglob("*")))


def _fetch_cases(tmp: Path, closed_port: int) -> list[tuple[list[str], dict[str, str], str]]:
    """(fetch arguments, environment, what the one line must name)."""
    d = ["--data-dir", str(tmp / "d")]
    return [
        (["nosuch"], {}, "nosuch"),
        (["illustris", "--retries", "-1", *d], {}, "--retries"),
        (["illustris", "--retries", "101", *d], {}, "--retries"),
        (["illustris", "--retries", "many", *d], {}, "--retries"),
        (["illustris", "--data-dir", str(tmp / "afile")], {}, "afile"),
        (["illustris", "--data-dir", str(tmp / "afile" / "x")], {}, "afile"),
        (["illustris", "--data-dir", str(tmp / "holder")], {}, "holder"),  # deepmerge/ a file
        (["illustris", "--data-dir", os.fsdecode(os.fsencode(str(tmp)) + b"/d\xff")], {},
         "UTF-8"),
        (["illustris"], {"GALMERGE_DATA": os.fsdecode(os.fsencode(str(tmp)) + b"/e\xff")},
         "UTF-8"),
        (["illustris", *d], {"GALMERGE_ZENODO_URL": "not-a-url"}, "GALMERGE_ZENODO_URL"),
        (["illustris", *d], {"GALMERGE_ZENODO_URL": "ftp://127.0.0.1"}, "GALMERGE_ZENODO_URL"),
        (["illustris", *d], {"GALMERGE_ZENODO_URL": "http://127.0.0.1:99999"},
         "GALMERGE_ZENODO_URL"),
        (["illustris", "--retries", "0", *d],
         {"GALMERGE_ZENODO_URL": f"http://127.0.0.1:{closed_port}"}, "GALMERGE_ZENODO_URL"),
    ]


def test_fetch_refuses_bad_values_in_one_line(tmp_path, monkeypatch):
    import socket

    from loopback_http import LoopbackServer
    from test_fetch import RECORD, _zenodo_blobs

    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "holder").mkdir()
    (tmp_path / "holder" / "deepmerge").write_text("x\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    with LoopbackServer() as srv:  # a working server: only the bad value can fail the run
        srv.add_zenodo_record(RECORD, _zenodo_blobs())
        for args, env_, needle in _fetch_cases(tmp_path, closed):
            monkeypatch.setenv("GALMERGE_ZENODO_URL", srv.url)
            monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "d"))
            for name, value in env_.items():
                monkeypatch.setenv(name, value)
            before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
            result = CliRunner().invoke(cli, ["fetch", *args, "--no-progress"])
            assert result.exit_code not in (0, None), (args, env_, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), \
                (args, env_, repr(result.exception))
            assert "Traceback" not in result.output and needle in result.output, \
                (args, env_, result.output)
            lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
            assert len(lines) == 1 or result.exit_code == 2, (args, env_, result.output)
            _untouched(tmp_path, before)


def test_a_file_that_is_no_checkpoint_is_named_so_without_torchs_advice(tmp_path):
    """torch.load's own text names a byte value or suggests weights_only=False (which would run
    the file's code): the message says what the file is not and what to pass."""
    cases = {"text.pt": b"hi\n", "cut.pt": b"PK\x03\x04" + b"\0" * 200,
             "pickle.pt": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94."}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        result = CliRunner().invoke(cli, ["export", str(tmp_path / name)])
        _one_line_failure(result, "is not a readable galmerge checkpoint")
        assert "weights_only" not in result.output and "pass a run directory" in result.output


def test_an_hdf5_file_without_images_is_named_so_by_classify(tmp_path):
    import h5py
    from test_classify import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["ra"] = np.zeros(3)
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "empty.h5"), "--model",
                                      str(ckpt), "--output", str(tmp_path / "o.csv")])
    _one_line_failure(result, "is an HDF5 file without an 'images' dataset")
    assert not (tmp_path / "o.csv").exists()


def test_a_source_too_small_to_train_is_refused_before_any_work(tmp_path):
    """Three images leave one for training: the shift score fitted at the end needs three, so
    the run is refused up front instead of failing after training with a half-written run."""
    result = CliRunner().invoke(cli, [
        "train", "--source", "synthetic:illustris?n=3&size=32",
        "--target", "synthetic:sdss?n=3&size=32&seed=1", "--run-dir", str(tmp_path / "run"),
        "--device", "cpu", "--quiet"])
    _one_line_failure(result, "labelled training images of 3; give it at least 10 images")
    assert not (tmp_path / "run").exists()


def _h5_images(path: Path, images: np.ndarray) -> str:
    import h5py

    with h5py.File(path, "w") as f:
        f["images"] = images.astype(np.float32)
        f["labels"] = np.arange(len(images)) % 2
    return f"hdf5:{path}"


def test_a_target_too_small_to_split_is_named_in_one_line(tmp_path):
    """Every set is split 70/10/20; one or two images cannot be, and the message names the set
    (it was a ValueError traceback from the split, before the size checks)."""
    rng = np.random.default_rng(0)
    source = _h5_images(tmp_path / "s.h5", rng.normal(size=(12, 3, 32, 32)))
    for n in (1, 2):
        target = _h5_images(tmp_path / f"t{n}.h5", rng.normal(size=(n, 3, 32, 32)))
        result = CliRunner().invoke(cli, [
            "train", "--source", source, "--target", target, "--run-dir",
            str(tmp_path / "run"), "--device", "cpu", "--quiet"])
        _one_line_failure(result, f"target {target} has {n} image")
        assert "give it at least 10 images" in result.output
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("shape", "needle"), [
    ((12, 3, 30, 32), "holds 30x32-pixel images; galmerge needs square stamps"),
    ((12, 32, 32, 3), "looks channels-last (N, H, W, C); store it as (N, C, H, W)"),
])
def test_images_that_are_not_square_channels_first_stamps_are_refused(tmp_path, shape, needle):
    """Non-square stamps were accepted and crashed training with a shape-mismatch traceback
    (after writing the run's config); channels-last ones read as 32 bands of 32x3 pixels."""
    bad = _h5_images(tmp_path / "bad.h5", np.random.default_rng(1).normal(size=shape))
    good = _h5_images(tmp_path / "good.h5",
                      np.random.default_rng(2).normal(size=(12, 3, 32, 32)))
    result = CliRunner().invoke(cli, [
        "train", "--source", bad, "--target", good, "--run-dir", str(tmp_path / "run"),
        "--device", "cpu", "--quiet"])
    _one_line_failure(result, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("env", "survey", "needle"), [
    ({"GALMERGE_SDSS_SKYSERVER_URL": "notaurl"}, "sdss",
     "GALMERGE_SDSS_SKYSERVER_URL = 'notaurl': give an http(s) address with a host"),
    ({"GALMERGE_SDSS_SAS_URL": "ftp://data.sdss.org/sas"}, "sdss", "GALMERGE_SDSS_SAS_URL = "),
    ({"GALMERGE_SDSS_SAS_URL": "http://127.0.0.1:99999"}, "sdss", "GALMERGE_SDSS_SAS_URL = "),
    ({}, "sdss?skyserver_url=notaurl", "survey option skyserver_url = 'notaurl'"),
    ({}, "sdss?sas_url=https://", "survey option sas_url = 'https://'"),
    # a malformed IPv6 host made urlsplit raise: a traceback
    ({}, "sdss?sas_url=http://[::1/sas", "survey option sas_url = 'http://[::1/sas': give an"),
    ({"GALMERGE_SDSS_SAS_URL": "http://me:s3cret@:80/sas"}, "sdss",
     "GALMERGE_SDSS_SAS_URL = 'http://***@:80/sas': give an http(s) address with a host"),
])
def test_bad_sdss_service_urls_are_one_line_before_any_row(tmp_path, monkeypatch, env, survey,
                                                            needle):
    """Unchecked, every row was fetch-failed: MissingSchema, written to the output, and the
    error blamed the fetches, not the setting."""
    from test_classify import CASJOBS, make_checkpoint

    (tmp_path / "cat.csv").write_text(CASJOBS)
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    before = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "cat.csv"), "--model", str(ckpt),
                                      "--survey", survey, "--quiet", "--device", "cpu",
                                      "--output", str(tmp_path / "o.csv")])
    _one_line_failure(result, needle)
    # the output's lock file (kept, like pip's and git's) is the one thing a refused run leaves
    _untouched(tmp_path, before | {".o.csv.lock"})
