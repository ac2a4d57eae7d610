"""The ``[observe]`` section: the source seen through a PSF and sky noise
(galmerge.data.observe)."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from train_toys import ToyPlugin, _NoNone, toy_sets

import galmerge
from galmerge.cli import cli
from galmerge.data.observe import observed
from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet


@pytest.fixture
def toys(register_plugin, plugin_manager):
    register_plugin(_NoNone() if "none" in plugin_manager.components("strategies") else ToyPlugin(),
                    "toys")


def _points(n: int = 20, size: int = 33) -> ImageSet:
    x = torch.zeros(n, 3, size, size)
    x[:, :, size // 2, size // 2] = 1.0
    return ImageSet(images=x, labels=torch.zeros(n, dtype=torch.int64), ids=np.arange(n),
                    bands=("g", "r", "i"), survey="points", pixel_scale_arcsec=0.4)


def test_psf_blur_keeps_flux_with_a_width_drawn_per_image_and_noise_has_the_given_sigma():
    stars = _points()
    blurred = observed(stars, {"psf_fwhm": [1.0, 2.0], "sky_sigma": "none"}, seed=3).images
    assert torch.allclose(blurred.sum(dim=(2, 3)), torch.ones(20, 3), atol=1e-4)
    yy, xx = torch.meshgrid(torch.arange(33.0) - 16, torch.arange(33.0) - 16, indexing="ij")
    r2 = (blurred[:, 0] * (xx**2 + yy**2)).sum(dim=(1, 2))  # 2 sigma^2 of each image's PSF
    fwhm_arcsec = 2.3548 * torch.sqrt(r2 / 2) * 0.4
    assert fwhm_arcsec.min() > 0.95 and fwhm_arcsec.max() < 2.05
    assert fwhm_arcsec.std() > 0.1  # one width per image, not one per set
    sky = observed(ImageSet(images=torch.zeros(20, 3, 33, 33), labels=torch.zeros(20),
                            ids=np.arange(20), bands=("g", "r", "i"), survey="blank"),
                   {"psf_fwhm": [0.0, 0.0], "sky_sigma": [0.1, 0.2, 0.3]}, seed=3).images
    assert sky.std(dim=(0, 2, 3)).tolist() == pytest.approx([0.1, 0.2, 0.3], rel=0.03)


def test_streamed_rows_are_observed_as_in_memory(tmp_path):
    stars = _points()
    path = tmp_path / "points.h5"
    with h5py.File(path, "w") as fh:
        fh["images"] = stars.images.numpy()
    options = {"psf_fwhm": [1.0, 2.0], "sky_sigma": [0.1, 0.2, 0.3]}
    in_memory = observed(stars, options, seed=5)
    with h5py.File(path, "r") as fh:
        lazy = ImageSet(images=fh["images"], labels=stars.labels, ids=stars.ids,
                        bands=stars.bands, survey="points", pixel_scale_arcsec=0.4)
        streamed = observed(lazy, options, seed=5)
        assert not streamed.in_memory
        rows = [7, 2, 11]
        # the same draws; a batch's widest kernel only changes float rounding
        assert torch.allclose(streamed.batch(rows), in_memory.batch(rows), rtol=0, atol=1e-6)
    assert not torch.equal(in_memory.images, observed(stars, options, seed=6).images)


def test_auto_noise_is_recorded_and_evaluate_scores_the_source_the_run_trained_on(toys, tmp_path):
    source, target = toy_sets()  # source noise 0.5, target 0.8: auto adds about 0.62
    run = tmp_path / "run"
    summary = galmerge.train(source=source, target=target, strategy="none", backbone="tiny",
                             epochs=2, batch_size=8, seed=1, device="cpu", quiet=True,
                             run_dir=run, sets=['observe.sky_sigma="auto"'])
    config = tomllib.loads((run / "config.toml").read_text())
    assert all(0.5 < s < 0.75 for s in config["observe"]["sky_sigma"])
    assert config["observe"]["psf_fwhm"] == [0.0, 0.0]
    report = galmerge.evaluate(run, device="cpu", bootstrap=0, source=source, target=target,
                               quiet=True)
    assert report["metrics"]["source_test"]["value"] == summary["metrics"]["source_test"]


def test_bad_observe_settings_are_one_line_errors(toys, tmp_path):
    source, target = toy_sets()
    cases = [
        ("observe.psf_fwhm=[2.0, 1.0]", "observe.psf_fwhm must be [lo, hi]"),
        ("observe.sky_sigma=[0.1]", "observe.sky_sigma has 1 values but the source has 2 bands"),
        ("observe.sky_sigma=\"loud\"", "observe.sky_sigma must be none, auto or"),
        ("observe.psf_fwhm=[1.0, 2.0]", "declares no pixel scale"),
        ("observe.seeing=1", "unknown observe option(s) seeing"),
    ]
    for setting, message in cases:
        with pytest.raises(GalmergeError, match=message.replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)")) as info:
            galmerge.train(source=source, target=target, strategy="none", backbone="tiny",
                           epochs=1, batch_size=8, device="cpu", quiet=True,
                           run_dir=tmp_path / "bad", sets=[setting])
        assert "\n" not in str(info.value)
    blank = replace(target, images=torch.full_like(target.images, float("nan")))
    with pytest.raises(GalmergeError, match="have no finite pixels in some band"):
        galmerge.train(source=source, target=blank, strategy="none", backbone="tiny", epochs=1,
                       batch_size=8, device="cpu", quiet=True, run_dir=tmp_path / "nan",
                       sets=["observe.sky_sigma=auto"])
    result = CliRunner().invoke(cli, ["train", "--source", "synthetic:illustris?n=50",
                                       "--target", "synthetic:sdss?n=50", "--set",
                                       "observe.psf_fwhm=[3.0, 1.0]", "--run-dir",
                                       str(tmp_path / "cli")])
    assert result.exit_code != 0
    assert "observe.psf_fwhm must be [lo, hi]" in result.output
    assert "Traceback" not in result.output
