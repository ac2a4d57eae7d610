"""The typed preprocessing spec: one code path for training and classify, dicts kept as stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import galmerge
from galmerge import Backbone, GalmergeError, PreprocessSpec, hookimpl

SIZE = 12
#: the recorder backbone's inputs, in call order (the model sees exactly what preprocessing made)
SEEN: list[torch.Tensor] = []


class Recorder(nn.Module):
    """A backbone that keeps every input it is given."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_channels, 4)
        self.out_features = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if int(x.shape[0]) >= 0:  # int() of a traced shape fails: classify keeps this module
            SEEN.append(x.detach().clone().contiguous())
        return self.lin(x.mean(dim=(2, 3)))


class RecorderPlugin:
    @hookimpl
    def register_backbones(self):
        return [Backbone(name="recorder", description="records its inputs",
                         build=lambda in_channels, image_size: Recorder(in_channels))]


def _imageset(n: int, seed: int) -> galmerge.ImageSet:
    gen = torch.Generator().manual_seed(seed)
    # nanomaggie-like pixels over several decades, where asinh implementations differ in ulps
    images = torch.randn(n, 3, SIZE, SIZE, generator=gen) * torch.rand(n, 3, 1, 1, generator=gen)
    images = images * torch.logspace(-3, 2, SIZE * SIZE).view(1, 1, SIZE, SIZE)
    return galmerge.ImageSet(images=images, labels=torch.arange(n) % 2, ids=np.arange(n),
                             bands=("g", "r", "i"), survey="toy", pixel_scale_arcsec=0.396,
                             stretch="arcsinh", stretch_scale=0.05)


def test_a_stamp_preprocessed_by_classify_equals_the_training_path_bit_for_bit(
        tmp_path, register_plugin, monkeypatch):
    from galmerge.io.hdf5 import write_imageset
    from galmerge.models.model import build_model, save_checkpoint
    from galmerge.training.data import prepare_domains

    register_plugin(RecorderPlugin(), "recorder-test")
    monkeypatch.chdir(tmp_path)
    source_set, target_set = _imageset(16, 1), _imageset(24, 2)
    config = {"seed": 0, "source": "toy-source", "target": "toy-target"}
    source, target = prepare_domains(config, source_set, target_set, torch.device("cpu"))
    assert target.images is not None  # training's normalised device tensor, made once
    model = build_model("recorder", 3, SIZE)
    save_checkpoint(tmp_path / "best.pt", {
        "galmerge_version": "test", "backbone": "recorder", "backbone_options": {},
        "in_channels": 3, "image_size": SIZE, "num_classes": 2, "model": model.state_dict(),
        "temperature": 1.0, "config": {}, "epoch": 1, "training_state": None,
        "preprocess": {"source": source.spec.as_dict(), "target": target.spec.as_dict()},
    })
    write_imageset(tmp_path / "stamps.h5", target_set)
    SEEN.clear()
    from galmerge.cli import cli

    result = CliRunner().invoke(cli, [
        "classify", str(tmp_path / "stamps.h5"), "--model", str(tmp_path / "best.pt"),
        "--output", str(tmp_path / "out.csv"), "--batch-size", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    # build_model's probe of the feature width (one batch of 2 zero images) is no stamp
    seen = torch.cat([b for b in SEEN if not (len(b) == 2 and not b.any())])
    assert seen.shape == target.images.shape
    assert torch.equal(seen, target.images)
    # and the stretch is asinh_, so that this test can fail: torch.asinh differs in some ulps
    old = torch.asinh(target_set.images / 0.05)
    assert not torch.equal(target.spec.stretched(target_set.images), old)


def test_a_stored_spec_dict_comes_back_unchanged():
    stored = {"survey": "sdss", "bands": ["u", "g"], "jpeg_scale": 2.0, "channels": 2,
              "image_size": 40, "pixel_scale_arcsec": None, "image_source": "jpeg",
              "stretch": "none", "stretch_scale": 1, "mean": [0.5, 1], "std": [2.0, 3.0]}
    spec = PreprocessSpec.from_dict(stored)
    assert repr(spec.as_dict()) == repr(stored)  # order and value types: cache keys hash it
    assert repr(dict(spec)) == repr(stored) and spec["jpeg_scale"] == 2.0
    assert (spec.bands, spec.image_size, spec.n_channels, spec.mean) == (("u", "g"), 40, 2,
                                                                         (0.5, 1.0))
    assert spec.extra == {"jpeg_scale": 2.0}
    spec.as_dict()["bands"].append("r")  # a copy: the spec cannot be changed through it
    assert spec.bands == ("u", "g") and spec["bands"] == ["u", "g"]


def test_checkpoints_written_before_load_with_their_spec_bit_for_bit(tmp_path):
    from galmerge.models.model import build_model, load_model, read_checkpoint, save_checkpoint
    from galmerge.training import checkpoints

    stored = {"survey": "synthetic:sdss", "bands": ["g", "r", "i"], "channels": 3,
              "image_size": SIZE, "pixel_scale_arcsec": 0.396, "image_source": "frames",
              "stretch": "arcsinh", "stretch_scale": 0.05, "mean": [0.1, 0.2, 0.3],
              "std": [1.5, 1.25, 0.75]}
    model = build_model("deepmerge", 3, SIZE)
    save_checkpoint(tmp_path / "old.pt", {
        "galmerge_version": "0.1.0", "backbone": "deepmerge", "backbone_options": {},
        "in_channels": 3, "image_size": SIZE, "num_classes": 2, "model": model.state_dict(),
        "temperature": 1.0, "config": {}, "epoch": 1, "training_state": None,
        "preprocess": {"source": dict(stored), "target": dict(stored)},
    })
    loaded = load_model(tmp_path / "old.pt")
    assert isinstance(loaded.preprocess["target"], PreprocessSpec)
    assert repr(loaded.preprocess["target"].as_dict()) == repr(stored)
    # what training writes back is the same dict form
    again = checkpoints.payload({"backbone": "deepmerge", "backbone_options": {}},
                                loaded.model, nn.ModuleDict(), loaded.preprocess, (3, SIZE),
                                1, None)
    assert repr(again["preprocess"]["target"]) == repr(stored)
    save_checkpoint(tmp_path / "new.pt", again)
    assert read_checkpoint(tmp_path / "new.pt")["preprocess"] == {"source": stored,
                                                                    "target": stored}


@pytest.mark.parametrize(("change", "message"), [
    ({"stretch": "log"}, "stretch must be none or arcsinh"),
    ({"stretch": "arcsinh", "stretch_scale": 0}, "stretch_scale must be a number above 0"),
    ({"mean": [0.0]}, "needs both mean and std"),
    ({"mean": [0.0], "std": [1.0, 2.0]}, "1 means but 2 stds"),
    ({"image_size": "big"}, "malformed"),
])
def test_a_malformed_spec_is_one_line(change, message):
    with pytest.raises(GalmergeError, match=message) as info:
        PreprocessSpec.from_dict({"bands": ["g"], **change})
    assert "\n" not in str(info.value)


def test_stamp_geometry_is_the_surveys_one_check():
    spec = PreprocessSpec(bands=("g", "r"), image_size=32, pixel_scale_arcsec=None)
    assert spec.stamp_geometry("X", bands="grz", default_scale=0.262) == (["g", "r"], 32, 0.262)
    with pytest.raises(GalmergeError, match=r"X cannot provide this model.s bands g,r: .*\(it has z\)"):
        spec.stamp_geometry("X", bands="z", default_scale=1.0)
    with pytest.raises(GalmergeError, match="X cannot cut 32-pixel stamps"):
        spec.stamp_geometry("X", size=(4, 16), default_scale=1.0)
    with pytest.raises(GalmergeError, match="X cannot produce 0.262 arcsec/pixel"):
        spec.stamp_geometry("X", scale=(0.3, 1), default_scale=0.262)
    with pytest.raises(GalmergeError, match="not image_source 'jpeg'"):
        PreprocessSpec(image_source="jpeg", bands=("g",), image_size=8).stamp_geometry(
            "X", default_scale=1.0)


def test_old_meta_keys_still_fill_the_imageset_fields(tmp_path):
    """Files and code of galmerge <= 0.1 kept the preprocessing facts in ``meta``."""
    import h5py

    from galmerge.io.hdf5 import read_imageset, write_imageset

    old = galmerge.ImageSet(images=torch.zeros(2, 1, 4, 4), labels=[0, 1], ids=[0, 1],
                            bands=("r",), survey="old",
                            meta={"stretch": "arcsinh", "stretch_scale": 0.5,
                                  "image_source": "jpeg", "note": "kept"})
    assert (old.stretch, old.stretch_scale, old.image_source) == ("arcsinh", 0.5, "jpeg")
    assert old.meta == {"note": "kept"}
    write_imageset(tmp_path / "x.h5", old)
    with h5py.File(tmp_path / "x.h5") as f:  # older versions read these keys from the file
        assert '"stretch": "arcsinh"' in f.attrs["galmerge_meta"]
    back = read_imageset(tmp_path / "x.h5")
    assert (back.stretch, back.stretch_scale, back.image_source, back.storage_dtype) == (
        "arcsinh", 0.5, "jpeg", "float32")
    assert back.meta == {"note": "kept"}
