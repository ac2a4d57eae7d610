"""`synthetic:PRESET`: spec options, labels, metadata, HDF5 cache, errors through the CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from galmerge.cli import cli
from galmerge.data.datasets import load_imageset
from galmerge.errors import GalmergeError
from galmerge.plugin.manager import get_plugin_manager


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path))
    return tmp_path


def test_survey_record_lists_presets():
    survey = get_plugin_manager().get("surveys", "synthetic")
    assert {"pristine", "noisy", "illustris", "sdss"} <= set(survey.presets)


def test_loads_a_labelled_set_with_physical_metadata(data_dir):
    s = load_imageset("synthetic:sdss?n=24&seed=3&merger_fraction=0.25")
    assert s.images.dtype == torch.float32 and tuple(s.images.shape) == (24, 3, 75, 75)
    assert int((s.labels == 1).sum()) == 6 and int((s.labels == 0).sum()) == 18
    assert s.ids[5] == "synthetic-sdss-s3-000005"
    assert s.bands == ("g", "r", "i") and s.pixel_scale_arcsec == pytest.approx(0.396)
    assert s.survey == "synthetic:sdss"
    assert s.stretch == "arcsinh" and s.image_source == "frames"
    assert s.stretch_scale > 0


def test_second_load_reads_the_cache_and_new_parameters_make_a_new_file(data_dir):
    first = load_imageset("synthetic:illustris?n=12&seed=1")
    files = sorted((data_dir / "synthetic").glob("*.h5"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = load_imageset("synthetic:illustris?n=12&seed=1")
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    assert torch.equal(first.images, second.images)
    assert np.array_equal(first.ids, second.ids)
    assert torch.equal(first.labels, second.labels)
    for spec in ("synthetic:illustris?n=12&seed=2", "synthetic:illustris?n=13&seed=1",
                 "synthetic:illustris?n=12&seed=1&merger_fraction=0.3",
                 "synthetic:illustris?n=12&seed=1&size=64", "synthetic:pristine?n=12&seed=1"):  # fmt: skip
        load_imageset(spec)
    assert len(list((data_dir / "synthetic").glob("*.h5"))) == 6
    with h5py.File(files[0]) as f:  # scene parameters travel with the images
        assert f["scene/label"].shape == (12,)
        assert f["observation/redshift"].shape == (12,)


def test_cache_off_renders_the_same_images(data_dir):
    cached = load_imageset("synthetic:noisy?n=10&seed=4")
    fresh = load_imageset("synthetic:noisy?n=10&seed=4&cache=false")
    assert torch.equal(cached.images, fresh.images)
    assert not any((data_dir / "synthetic").glob("*n10-seed4*mf0.5-75px*.tmp"))


def test_image_size_option(data_dir):
    s = load_imageset("synthetic:sdss?n=4&size=48&cache=false")
    assert tuple(s.images.shape) == (4, 3, 48, 48)


def test_presets_differ_in_depth_and_resolution(data_dir):
    illustris = load_imageset("synthetic:illustris?n=16&seed=8&cache=false")
    sdss = load_imageset("synthetic:sdss?n=16&seed=8&cache=false")
    assert torch.equal(illustris.labels, sdss.labels)  # same scenes, two domains

    def pixel_noise(images: torch.Tensor) -> float:  # smooth light cancels in differences
        return float((images[..., 1:] - images[..., :-1]).abs().median())

    assert pixel_noise(sdss.images) > 0.02
    assert pixel_noise(illustris.images) < 0.1 * pixel_noise(sdss.images)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("synthetic:nope", "choose one of: pristine, noisy, illustris, sdss"),
        ("synthetic", "needs a preset"),
        ("synthetic:sdss?colour=red", "unknown option 'colour'"),
        ("synthetic:sdss?n=abc", "n must be an integer"),
        ("synthetic:sdss?n=1", "n must be between"),
        ("synthetic:sdss?merger_fraction=2", "merger_fraction must be a number from 0 to 1"),
        ("synthetic:sdss?seed=-1", "seed must be >= 0"),
        ("synthetic:sdss?cache=maybe", "cache must be true or false"),
    ],
)
def test_bad_specs_give_one_line_errors(spec, fragment, data_dir):
    with pytest.raises(GalmergeError, match=fragment):
        load_imageset(spec)
    result = CliRunner().invoke(cli, ["preview", spec, "-o", str(data_dir / "x.png")])
    assert result.exit_code != 0
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_spec_values_keep_plus_and_a_repeated_option_is_refused(data_dir):
    """The spec parser read '+' as a space (seeing=1.5e+0 refused as '1.5e 0') and let a
    repeated option silently replace the first (n=6&n=7 gave 7 images)."""
    plus = load_imageset("synthetic:sdss?n=6&seeing=1.5e+0&cache=false")
    same = load_imageset("synthetic:sdss?n=6&seeing=1%2E5&cache=false")  # %XX still decoded
    assert torch.equal(plus.images, same.images)
    result = CliRunner().invoke(cli, ["preview", "synthetic:sdss?n=6&n=7&cache=false",
                                      "-o", str(data_dir / "x.png")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "option 'n' is given twice" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (data_dir / "x.png").exists()


@pytest.mark.parametrize("cache", ["true", "false"])
def test_a_set_larger_than_memory_is_refused_before_rendering(data_dir, cache):
    """n=5,000,000 at size=512 (15.7 TB of float32, within each option's range) crashed with
    a torch allocation traceback; cached or not, the render holds the images in memory."""
    spec = f"synthetic:sdss?n=5000000&size=512&cache={cache}"
    result = CliRunner().invoke(cli, ["preview", spec, "-o", str(data_dir / "x.png")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "need 15728.6 GB of memory" in result.output
    assert "give a smaller n" in result.output and "or a smaller size" in result.output
    assert not (data_dir / "synthetic").exists() and not (data_dir / "x.png").exists()
