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
from galmerge.data.field import FieldLibrary, field_library
from galmerge.data.observe import observed
from galmerge.errors import GalmergeError
from galmerge.io.hdf5 import write_imageset
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
    with pytest.raises(GalmergeError, match=r"target ImageSet .*\(NaN/inf\) in 60 of 60"):
        galmerge.train(source=source, target=blank, strategy="none", backbone="tiny", epochs=1,
                       batch_size=8, device="cpu", quiet=True, run_dir=tmp_path / "nan",
                       sets=["observe.sky_sigma=auto"])
    # a file read without its finite check (an ImageSet given in Python is always checked)
    write_imageset(tmp_path / "blank.h5", blank)
    with pytest.raises(GalmergeError, match="have no finite pixels in some band"):
        galmerge.train(source=source, target=f"hdf5:{tmp_path / 'blank.h5'}?check_finite=0",
                       strategy="none", backbone="tiny", epochs=1,
                       batch_size=8, device="cpu", quiet=True, run_dir=tmp_path / "nan",
                       sets=["observe.sky_sigma=auto"])
    result = CliRunner().invoke(cli, ["train", "--source", "synthetic:illustris?n=50",
                                       "--target", "synthetic:sdss?n=50", "--set",
                                       "observe.psf_fwhm=[3.0, 1.0]", "--run-dir",
                                       str(tmp_path / "cli")])
    assert result.exit_code != 0
    assert "observe.psf_fwhm must be [lo, hi]" in result.output
    assert "Traceback" not in result.output


def _stamps_with_field(n: int, rate: float, central: float, seed: int, size: int = 41,
                       noise: float = 0.1) -> ImageSet:
    """A central Gaussian galaxy of total flux ``central`` per band, Poisson(``rate``) point-like
    field sources (flux 3) at uniform positions, Gaussian sky noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = (size - 1) / 2

    def blob(y: float, x: float, sigma: float) -> np.ndarray:
        g = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
        return g / g.sum()

    x = rng.normal(0, noise, (n, 3, size, size)).astype(np.float32)
    x += central * blob(c, c, 3.0)[None, None]
    for i in range(n):
        for _ in range(rng.poisson(rate)):
            x[i] += 3.0 * blob(rng.uniform(0, size - 1), rng.uniform(0, size - 1), 1.2)
    return ImageSet(images=torch.from_numpy(x), labels=torch.zeros(n, dtype=torch.int64),
                    ids=np.arange(n), bands=("g", "r", "i"), survey="field")


def test_field_library_finds_the_target_field_sources_and_not_the_central_galaxy():
    target = _stamps_with_field(300, rate=2.0, central=20.0, seed=1)
    lib = field_library(target, np.arange(300))
    assert lib.rate == pytest.approx(2.0, rel=0.15)  # density in the ring x stamp area
    assert lib.patches.shape[1:] == (3, 15, 15)
    # every cut-out is a field source (peak near the patch centre, flux about 3 per band)
    centre = lib.patches[:, :, 6:9, 6:9].sum(dim=(2, 3))
    assert (centre > 0.5).all()
    assert lib.patches.sum(dim=(2, 3)).median() == pytest.approx(3.0, rel=0.2)
    # a source with the same galaxies and no field: its own ring count is subtracted (about 0);
    # central galaxies twice as bright: field sources are pasted twice as bright
    source = _stamps_with_field(300, rate=0.0, central=40.0, seed=2, noise=0.0)
    lib2 = field_library(target, np.arange(300), source, np.arange(300))
    assert lib2.rate == pytest.approx(lib.rate, abs=0.05)
    assert lib2.scale == pytest.approx(2.0, rel=0.1)
    crowded = _stamps_with_field(300, rate=2.0, central=20.0, seed=3)
    assert field_library(target, np.arange(300), crowded, np.arange(300)).rate < 0.3
    # target pixels twice the source's: patches twice as wide (flux kept), a source stamp
    # covers a quarter of the sky, so a quarter of the sources
    coarse = field_library(replace(target, pixel_scale_arcsec=0.8), np.arange(300),
                           replace(source, pixel_scale_arcsec=0.4), np.arange(300))
    assert coarse.rate == pytest.approx(lib2.rate / 4, rel=1e-6)
    resampled = coarse.on_pixels(0.4)
    assert resampled.patches.shape[-1] == 31
    assert torch.allclose(resampled.patches.sum(dim=(2, 3)), lib2.patches.sum(dim=(2, 3)),
                          rtol=1e-4, atol=1e-5)
    # observed() resamples the library to the source's pixels itself: a 3x3-pixel source of a
    # 0.8"-pixel target covers about four times the pixels of a 0.4"-pixel source, same flux
    blank = ImageSet(images=torch.zeros(100, 3, 41, 41), labels=torch.zeros(100),
                     ids=np.arange(100), bands=("g", "r", "i"), survey="blank",
                     pixel_scale_arcsec=0.4)
    options = {"psf_fwhm": [0.0, 0.0], "sky_sigma": "none", "field": "target",
               "field_rate": 1.0, "field_scale": 1.0}
    square = torch.zeros(1, 3, 15, 15)
    square[0, :, 6:9, 6:9] = 1.0

    def pixels_per_flux(scale: float) -> float:
        x = observed(blank, options, seed=1, field=FieldLibrary(square, 1.0, 1.0, scale)).images
        return float((x[:, 1] > 0).sum() / x[:, 1].sum())

    assert pixels_per_flux(0.8) > 3 * pixels_per_flux(0.4)


def test_pasted_field_sources_follow_the_rate_and_depend_only_on_seed_and_row(tmp_path):
    blank = ImageSet(images=torch.zeros(400, 3, 33, 33), labels=torch.zeros(400),
                     ids=np.arange(400), bands=("g", "r", "i"), survey="blank")
    patch = torch.zeros(1, 3, 15, 15)
    patch[0, :, 7, 7] = 1.0  # unit flux at the centre: an image's flux counts its sources
    options = {"psf_fwhm": [0.0, 0.0], "sky_sigma": "none", "field": "target",
               "field_rate": 3.0, "field_scale": 2.0}
    lib = FieldLibrary(patch, rate=0.0)  # the options' rate and scale are the ones used
    out = observed(blank, options, seed=4, field=lib)
    counts = out.images[:, 0].sum(dim=(1, 2)) / 2.0
    assert counts.mean().item() == pytest.approx(3.0, rel=0.1)
    assert counts.var().item() == pytest.approx(3.0, rel=0.25)  # Poisson
    assert torch.equal(blank.images, torch.zeros(400, 3, 33, 33))  # the source is not changed
    path = tmp_path / "blank.h5"
    with h5py.File(path, "w") as fh:
        fh["images"] = blank.images.numpy()
    with h5py.File(path, "r") as fh:
        lazy = replace(blank, images=fh["images"])
        rows = [9, 3, 120]
        assert torch.equal(observed(lazy, options, seed=4, field=lib).batch(rows),
                           out.batch(rows))
    assert not torch.equal(observed(blank, options, seed=5, field=lib).images, out.images)
    with pytest.raises(GalmergeError, match="needs the run's target data"):
        observed(blank, options, seed=4)


def test_field_from_the_target_is_recorded_and_evaluate_rebuilds_it(toys, tmp_path):
    def two_bands(s: ImageSet, seed: int) -> ImageSet:
        labels = torch.from_numpy(np.random.default_rng(seed).integers(0, 2, len(s)))
        images = s.images[:, :2].clone()
        images[labels == 1, :, 18:23, 18:23] += 1.0  # mergers carry a blob
        return replace(s, images=images, bands=("g", "r"), labels=labels)

    source = two_bands(_stamps_with_field(200, rate=0.0, central=20.0, seed=8, noise=0.01), 0)
    target = two_bands(_stamps_with_field(200, rate=2.0, central=20.0, seed=7), 1)
    run = tmp_path / "run"
    summary = galmerge.train(source=source, target=target, strategy="none", backbone="tiny",
                             epochs=2, batch_size=8, seed=1, device="cpu", quiet=True,
                             run_dir=run, sets=['observe.field="target"'])
    config = tomllib.loads((run / "config.toml").read_text())
    assert 1.0 < config["observe"]["field_rate"] < 3.0
    assert config["observe"]["field_scale"] > 0
    report = galmerge.evaluate(run, device="cpu", bootstrap=0, source=source, target=target,
                               quiet=True)
    assert report["metrics"]["source_test"]["value"] == summary["metrics"]["source_test"]
    for setting, message in [("observe.field=\"sky\"", "observe.field must be none or target"),
                             ("observe.field_rate=-1", "observe.field_rate must be auto or"),
                             ("observe.field_scale=0", "observe.field_scale must be auto or")]:
        with pytest.raises(GalmergeError, match=message) as info:
            galmerge.train(source=source, target=target, strategy="none", backbone="tiny",
                           epochs=1, batch_size=8, device="cpu", quiet=True,
                           run_dir=tmp_path / "bad", sets=[setting])
        assert "\n" not in str(info.value)


def test_fraction_of_a_field_run_takes_the_target_spec_when_the_config_one_is_gone(toys,
                                                                                   tmp_path):
    from galmerge.fractions.validation_stats import load_validation
    from galmerge.io.hdf5 import write_imageset

    source = _stamps_with_field(120, rate=0.0, central=20.0, seed=8, noise=0.01)
    target = _stamps_with_field(120, rate=2.0, central=20.0, seed=7)
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 2, len(source)))
    source = replace(source, labels=labels)
    write_imageset(tmp_path / "source.h5", source)
    write_imageset(tmp_path / "target.h5", target)
    run = tmp_path / "run"
    galmerge.train(source=f"hdf5:{tmp_path / 'source.h5'}",
                   target=f"hdf5:{tmp_path / 'target.h5'}", strategy="none", backbone="tiny",
                   epochs=1, batch_size=8, seed=1, device="cpu", quiet=True, run_dir=run,
                   sets=['observe.field="target"'])
    out = tmp_path / "out.csv"
    galmerge.classify(str(tmp_path / "target.h5"), run, output=out, quiet=True, device="cpu")
    (tmp_path / "target.h5").rename(tmp_path / "moved.h5")  # config.toml's target spec is gone
    runner = CliRunner()
    res = runner.invoke(cli, ["fraction", str(out), "--model", str(run), "--bootstrap", "0"])
    assert res.exit_code == 1 and "--target SPEC" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    res = runner.invoke(cli, ["fraction", str(out), "--model", str(run), "--bootstrap", "0",
                              "--target", f"hdf5:{tmp_path / 'moved.h5'}", "--json"])
    assert res.exit_code == 0, res.output
    given = load_validation(run)  # the cache the --target call wrote
    (tmp_path / "moved.h5").rename(tmp_path / "target.h5")
    again = load_validation(run, refresh=True)  # scored again from config.toml's specs
    assert np.array_equal(given.p, again.p) and np.array_equal(given.labels, again.labels)


def test_auto_noise_with_a_psf_brings_the_blurred_source_to_the_targets_noise(toys, tmp_path):
    # pure sky: the source's own noise (0.5) is lowered by the blur before noise is added
    from galmerge.data.observe import border_noise

    rng = np.random.default_rng(0)

    def sky(sigma: float, name: str) -> ImageSet:
        x = torch.from_numpy(rng.normal(0, sigma, (60, 2, 24, 24)).astype(np.float32))
        return ImageSet(images=x, labels=torch.from_numpy(rng.integers(0, 2, 60)),
                        ids=np.arange(60), bands=("g", "r"), survey=name, pixel_scale_arcsec=0.4)

    source, target = sky(0.5, "noisy-source"), sky(0.8, "noisier-target")
    run = tmp_path / "run"
    galmerge.train(source=source, target=target, strategy="none", backbone="tiny", epochs=1,
                   batch_size=8, seed=1, device="cpu", quiet=True, run_dir=run,
                   sets=['observe.sky_sigma="auto"', "observe.psf_fwhm=[0.6, 1.0]"])
    config = tomllib.loads((run / "config.toml").read_text())
    seen = observed(source, config["observe"], seed=1)  # as the run observed its source
    rows = np.arange(60)
    np.testing.assert_allclose(border_noise(seen, rows), border_noise(target, rows), rtol=0.04)
