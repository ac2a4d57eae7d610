"""What a third-party plugin may get wrong, and how the core answers: plain values in
checkpoints, options the core adds, bugs in build/load named as the plugin's, name clashes
with built-ins, and cutout services that break the fetch protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from click.testing import CliRunner
from train_toys import ToyPlugin, _NoNone, toy_sets

from galmerge import ImageSet, Survey, hookimpl
from galmerge.cli import cli

TRAIN = ["train", "--backbone", "tiny", "--strategy", "meangap", "--device", "cpu", "--quiet",
         "--epochs", "1", "--batch-size", "8"]


def _toys(register_plugin, plugin_manager) -> None:
    plugin = _NoNone() if "none" in plugin_manager.components("strategies") else ToyPlugin()
    register_plugin(plugin, "toys")


class NumpySurvey:
    """A survey whose ImageSet carries what np.load / h5py / FITS give: numpy strings and
    scalars (subclasses of str and float)."""

    @hookimpl
    def register_surveys(self):
        def load(arg: str | None, options: Mapping[str, Any]) -> ImageSet:
            target = toy_sets()[1]
            return ImageSet(
                images=target.images, labels=target.labels, ids=target.ids,
                bands=tuple(np.array(["g", "r"])), survey=np.str_("npsurv"),
                pixel_scale_arcsec=np.float64(0.4), stretch_scale=np.float32(2.0),
            )

        return [Survey(name="npsurv", description="numpy-valued survey", load=load)]


def test_a_survey_giving_numpy_strings_and_scalars_makes_a_readable_checkpoint(
        register_plugin, plugin_manager, tmp_path):
    # np.str_ bands and a np.float64 pixel scale went into the checkpoint's preprocessing
    # spec; torch's weights-only loader refused them, and every command then called best.pt
    # "damaged ... train again" after a full training run
    _toys(register_plugin, plugin_manager)
    register_plugin(NumpySurvey(), "npsurv-plugin")
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, [*TRAIN, "--source", "toy:source", "--target", "npsurv",
                                   "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    payload = torch.load(run / "best.pt", weights_only=True)
    target = payload["preprocess"]["target"]
    assert target["bands"] == ["g", "r"] and type(target["bands"][0]) is str
    assert type(target["pixel_scale_arcsec"]) is float
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--device", "cpu"])
    assert "not a readable" not in res.output and "damaged" not in res.output, res.output


def test_a_checkpoint_holding_an_object_is_named_as_such_not_as_damage(tmp_path):
    # written by an older version from a numpy-valued survey: the file is whole, and
    # "damaged ... train again" sent the user round the same failure
    bad = tmp_path / "run" / "best.pt"
    bad.parent.mkdir()
    torch.save({"format": "galmerge-checkpoint/1", "preprocess": {"target": {
        "pixel_scale_arcsec": np.float64(0.4)}}}, bad)
    from galmerge.errors import GalmergeError
    from galmerge.models.model import read_checkpoint

    try:
        read_checkpoint(bad.parent)
    except GalmergeError as exc:
        assert "numpy" in str(exc) and "not damaged" in str(exc), exc
        assert "damaged, cut short" not in str(exc)
    else:
        raise AssertionError("a checkpoint holding a numpy scalar was read")


def test_save_checkpoint_stores_plain_values_or_names_the_value_it_cannot_store(tmp_path):
    from galmerge.errors import GalmergeError
    from galmerge.models.model import read_checkpoint, save_checkpoint

    state = torch.nn.BatchNorm1d(2).state_dict()
    save_checkpoint(tmp_path / "a.pt", {"model": state, "extra": {
        "scale": np.float64(0.4), "bands": (np.str_("g"),), "mean": np.zeros(2)}})
    payload = read_checkpoint(tmp_path / "a.pt")
    assert payload["extra"] == {"scale": 0.4, "bands": ("g",), "mean": [0.0, 0.0]}
    assert type(payload["extra"]["bands"][0]) is str
    try:
        save_checkpoint(tmp_path / "b.pt", {"extra": {"where": tmp_path}})
    except GalmergeError as exc:
        assert "'extra.where'" in str(exc) and "PosixPath" in str(exc)
    else:
        raise AssertionError("an object in a checkpoint was written")
    assert not (tmp_path / "b.pt").exists()


# -- classify and a survey's cutout service ------------------------------------------------

CATALOG = "objID,ra,dec\n1,150.0,2.0\n2,151.0,2.0\n3,152.0,2.0\n"


class StampService:
    cache_key = "contract:g,r,i:16px"

    def __init__(self, options):
        self.options = dict(options)
        self.mode = options.get("mode") or "ok"

    def fetch(self, requests_):
        from test_classify import stamp_for

        from galmerge import CutoutResult

        for req in requests_:
            image = stamp_for(req.ra, req.dec)
            if self.mode == "skip" and req.id == "2":
                continue
            if self.mode == "small" and req.id == "2":
                image = image[:, :8, :8]
            row = req.row + 1000 if self.mode == "offrow" else req.row
            yield CutoutResult(row, image, "ok")

    def summary(self):
        return ""

    def close(self):
        pass


class StampSurvey:
    """A survey that declares its cutout options, as docs/plugins.md asks, without workers."""

    seen: list[dict] = []

    @hookimpl
    def register_surveys(self):
        from galmerge import Option

        def cutouts(preprocess, options):
            StampSurvey.seen.append(dict(options))
            return StampService(options)

        return [Survey(name="stampsurv", description="declares its cutout options",
                       cutouts=cutouts,
                       cutout_options={"mode": Option("ok", "what the toy does")})]


def _classify_stamps(tmp_path, spec):
    from test_classify import make_checkpoint

    (tmp_path / "cat.csv").write_text(CATALOG)
    ckpt = tmp_path / "run" / "best.pt"
    if not ckpt.exists():
        make_checkpoint(ckpt)
    return CliRunner().invoke(cli, [
        "classify", str(tmp_path / "cat.csv"), "--model", str(ckpt), "--survey", spec,
        "--output", str(tmp_path / "out.csv"), "--cache", str(tmp_path / "stamps.h5"),
        "--workers", "3"])


def test_classify_gives_workers_only_to_a_survey_that_takes_it(register_plugin, tmp_path,
                                                               monkeypatch):
    # classify added workers to every survey's options, so a survey declaring its own schema
    # (without workers) always failed: "unknown option 'workers'", an option nobody typed
    monkeypatch.chdir(tmp_path)
    register_plugin(StampSurvey(), "stampsurv-plugin")
    StampSurvey.seen.clear()
    res = _classify_stamps(tmp_path, "stampsurv?mode=ok")
    assert res.exit_code == 0, res.output
    assert StampSurvey.seen and all(seen == {"mode": "ok"} for seen in StampSurvey.seen)
    # a survey with no schema checks its own options, and is still given workers
    from test_classify_plugins import ToySurveyPlugin

    register_plugin(ToySurveyPlugin(), "toy-plugin")
    import test_classify_plugins

    opened = []
    monkeypatch.setattr(test_classify_plugins, "ToyService",
                        lambda options: opened.append(dict(options)) or StampService({}))
    res = _classify_stamps(tmp_path, "toy")
    assert res.exit_code == 0, res.output
    assert opened and opened[0]["workers"] == 3
