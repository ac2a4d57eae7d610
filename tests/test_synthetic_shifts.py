"""Observing options of `synthetic:PRESET` that shift a preset (families of shifted pairs)."""

from __future__ import annotations

import pytest
import torch

from galmerge.data.datasets import load_imageset
from galmerge.errors import GalmergeError


def test_shift_options_change_pixels_and_cache_names_only_when_given(_data_dir):
    base = load_imageset("synthetic:sdss?n=6&seed=4")
    same = load_imageset("synthetic:sdss?n=6&seed=4&seeing=1&noise=1")
    assert torch.equal(base.images, same.images)  # factors of 1 render the preset itself
    assert torch.equal(base.labels, same.labels)
    shifted = load_imageset("synthetic:sdss?n=6&seed=4&seeing=1.5&stars=3&pixel_scale=0.5")
    assert not torch.equal(base.images, shifted.images)
    assert torch.equal(base.labels, shifted.labels)  # the same scenes, observed differently
    assert shifted.pixel_scale_arcsec == 0.5
    names = sorted(p.name for p in (_data_dir / "synthetic").glob("sdss*seed4*"))
    assert names[0].startswith("sdss-n6-seed4-")  # the unshifted preset keeps its old name
    assert any(n.startswith("sdss-seeing1.5-stars3-pixel_scale0.5-n6-") for n in names)
    fewer = load_imageset("synthetic:sdss?n=6&seed=4&merger_fraction=0.0&z_scale=1.5")
    assert int(fewer.labels.sum()) == 0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:illustris?n=4&seeing=2", "seeing needs a preset with a PSF"),
        ("synthetic:pristine?n=4&noise=2", "noise needs a preset with noise"),
        ("synthetic:sdss?n=4&noise=-1", "noise must be a number from 0 to 100"),
        ("synthetic:sdss?n=4&pixel_scale=true", "pixel_scale must be a number"),
        ("synthetic:sdss?n=4&blur=2", "unknown option 'blur'"),
    ],
)
def test_bad_shift_options_are_one_line_errors(spec, message):
    with pytest.raises(GalmergeError, match=message):
        load_imageset(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        # at most 8 field sources are drawn per stamp: larger means were silently cut to ~8
        ("synthetic:illustris?n=4&stars=20", "stars must be a number from 0 to 8"),
        ("synthetic:illustris?n=4&field_galaxies=9", "field_galaxies must be a number from 0 to 8"),
        # sdss has 0.6 stars and 3 galaxies of its own: 6 + 3 = 9 left 2 galaxies, not 3
        ("synthetic:sdss?n=4&stars=6", "stars \\+ field_galaxies must total at most 8 per stamp"),
        ("synthetic:sdss?n=4&stars=5&field_galaxies=3.5", "not 5 \\+ 3.5"),
    ],
)
def test_field_source_means_above_the_renderers_cap_are_refused(spec, message):
    with pytest.raises(GalmergeError, match=message):
        load_imageset(spec)


def test_field_source_cap_matches_the_renderer(_data_dir):
    from galmerge.surveys.synthetic.plugin import MAX_FIELD_SOURCES
    from galmerge.surveys.synthetic.render.draw import MAX_FIELD

    assert MAX_FIELD_SOURCES == MAX_FIELD
    # the benchmarks' crowded fields (2 + 6) and field stars (8 on illustris) stay allowed
    for spec in ("synthetic:sdss?n=3&stars=2&field_galaxies=6&cache=false",
                 "synthetic:illustris?n=3&stars=8&cache=false",
                 "synthetic:sdss?n=3&stars=0.6&field_galaxies=7.4&cache=false"):
        assert len(load_imageset(spec)) == 3


def test_cache_names_tell_apart_values_that_differ_beyond_six_digits(_data_dir):
    def name(spec: str) -> str:
        return load_imageset(spec).meta["cache_path"].rsplit("/", 1)[1]

    assert name("synthetic:sdss?n=3&noise=1") == "sdss-noise1-n3-seed0-mf0.5-75px-r4.h5"
    assert name("synthetic:sdss?n=3&noise=1.0000001") == (
        "sdss-noise1.0000001-n3-seed0-mf0.5-75px-r4.h5")
    assert name("synthetic:sdss?n=3&merger_fraction=0.3") == "sdss-n3-seed0-mf0.3-75px-r4.h5"
    assert name("synthetic:sdss?n=3&merger_fraction=0.30000001") == (
        "sdss-n3-seed0-mf0.30000001-75px-r4.h5")
    # values that :g writes exactly keep the names cached sets have always had
    assert name("synthetic:sdss?n=3&z_scale=1e-0&pixel_scale=0.396") == (
        "sdss-pixel_scale0.396-z_scale1-n3-seed0-mf0.5-75px-r4.h5")


def test_sets_drawn_anew_in_stop_40_do_not_reuse_a_cache_of_the_old_pixels(_data_dir):
    """Renders that stop 40 corrected (PSF wings wrapping round, z beyond 6) are cached as
    -r4.1, so an -r4 file written before is not read as the corrected pixels; sets drawn as
    before keep their -r4 names (the README's and benchmarks' caches stay valid)."""
    def name(spec: str) -> str:
        return load_imageset(spec).meta["cache_path"].rsplit("/", 1)[1]

    assert name("synthetic:sdss?n=3&size=32&seeing=10") == (
        "sdss-seeing10-n3-seed0-mf0.5-32px-r4.1.h5")
    assert name("synthetic:pristine?n=3&size=32&z_scale=5") == (
        "pristine-z_scale5-n3-seed0-mf0.5-32px-r4.1.h5")
    for spec in ("sdss?n=3&size=32", "sdss?n=3&size=32&seeing=2.8", "noisy?n=3&size=32&z_scale=2.5",
                 "sdss?n=3&size=32&z_scale=5", "illustris?n=3&size=32"):
        assert name(f"synthetic:{spec}").endswith("-r4.h5"), spec
