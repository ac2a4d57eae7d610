"""galmerge-legacysurvey end to end: discovery, then stamps from a loopback cutout service."""

from __future__ import annotations

import math
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from galmerge.errors import GalmergeError
from galmerge.plugin.cutouts import CutoutRequest

try:
    metadata.distribution("galmerge-legacysurvey")
    INSTALLED = True
except metadata.PackageNotFoundError:  # run from a checkout: import the package from its folder
    INSTALLED = False
    sys.path.insert(0, str(Path(__file__).parents[1]))

PRE = {"bands": ["g", "r", "z"], "image_size": 41, "pixel_scale_arcsec": 0.262,
       "image_source": "frames"}


@pytest.fixture
def survey():
    """The `legacysurvey` survey record, from the entry point when the plugin is installed."""
    from galmerge.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    if not INSTALLED:
        import galmerge_legacysurvey.plugin as module

        pm.register(module, name="legacysurvey")
    return pm.get("surveys", "legacysurvey")


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits between tries, recorded instead of slept."""
    import galmerge_legacysurvey.cutouts as module

    waits: list[float] = []
    monkeypatch.setattr(module, "retry_sleep", waits.append)
    return waits


@pytest.fixture
def options(sleeps) -> dict:
    return {"backoff": 0.001, "attempts": 3, "timeout": 2.0, "workers": 3}


def _fetch(service, reqs):
    out = {r.row: r for r in service.fetch(reqs)}
    assert sorted(out) == sorted(r.row for r in reqs)
    return out


def _req(server, i: int, row: int | None = None) -> CutoutRequest:
    g = server.galaxies[i]
    return CutoutRequest(i if row is None else row, g.ra, g.dec, f"g{i}")


@pytest.mark.skipif(not INSTALLED, reason="pip install -e plugins/galmerge-legacysurvey --no-deps")
def test_discovered_through_its_entry_point_and_can_be_blocked(monkeypatch):
    from galmerge.plugin.manager import get_plugin_manager, reset_plugin_manager

    pm = get_plugin_manager()
    assert pm.get("surveys", "legacysurvey").cutouts is not None
    assert pm.owner("surveys", "legacysurvey").distribution == "galmerge-legacysurvey"
    monkeypatch.setenv("GALMERGE_DISABLE_PLUGINS", "legacysurvey")
    reset_plugin_manager()
    with pytest.raises(GalmergeError, match="unknown survey 'legacysurvey'"):
        get_plugin_manager().get("surveys", "legacysurvey")


def test_stamps_are_centred_with_their_flux_in_band_order(survey, legacy_server, options):
    pre = {**PRE, "bands": ["z", "g", "r"]}
    with survey.cutouts(pre, options) as svc:
        results = _fetch(svc, [_req(legacy_server, 0), _req(legacy_server, 2)])
    for row in (0, 2):
        g = legacy_server.galaxies[row]
        image = results[row].image
        assert results[row].status == "ok" and image.shape == (3, 41, 41)
        assert image.dtype == np.float32
        for c, band in enumerate("zgr"):
            assert np.unravel_index(np.argmax(image[c]), (41, 41)) == (20, 20)
            if row == 2:  # galaxy 0 has a neighbour within the stamp
                assert image[c].sum() == pytest.approx(g.flux[band], rel=0.01)
    query = legacy_server.queries[0]
    assert query["layer"] == "ls-dr10" and query["pixscale"] == "0.262"
    assert query["size"] == "41" and query["bands"] == "zgr"


def test_north_is_up_in_fits_order(survey, legacy_server, options):
    pre = {**PRE, "bands": ["r"], "image_size": 81, "pixel_scale_arcsec": 0.5}
    with survey.cutouts(pre, options) as svc:
        image = _fetch(svc, [_req(legacy_server, 0)])[0].image[0]
    a, b = legacy_server.galaxies[0], legacy_server.galaxies[1]
    row = round(40 + (b.dec - a.dec) * 3600 / 0.5)
    window = image[row - 3 : row + 4, 37:44]
    assert np.unravel_index(np.argmax(window), window.shape) == (3, 3)
    assert image.sum() == pytest.approx(a.flux["r"] + b.flux["r"], rel=0.01)


def test_429_500_drop_truncation_and_slowness_are_survived(survey, legacy_server, options, sleeps):
    legacy_server.add_fault("ra=180.0000000", "429", retry_after="4")
    legacy_server.add_fault("ra=180.0000000", "500", times=1)
    legacy_server.add_fault("ra=180.0000000", "drop")
    legacy_server.add_fault("ra=35.5000000", "truncate")
    legacy_server.add_fault("ra=35.5000000", "slow", delay=1.5)
    with survey.cutouts(PRE, {**options, "timeout": 0.5, "attempts": 4}) as svc:
        results = _fetch(svc, [_req(legacy_server, 0), _req(legacy_server, 2)])
        summary = svc.summary()
    assert {r.status for r in results.values()} == {"ok"}
    assert 4.0 in sleeps
    assert legacy_server.count("cutout.fits") == 4 + 3
    assert "HTTP 429" in summary and "timeout" in summary and "none failed" in summary


def test_planes_named_as_other_bands_are_refused_and_a_permutation_reordered(
        survey, legacy_server, options):
    """An answer whose BANDn keywords name other bands than asked is never used as those bands
    (fetch-failed after retries); one naming the asked bands in another order is reordered; one
    naming no band is taken in the order asked."""
    legacy_server.add_fault("dec=10.0000000", "bands", times=-1, bands="grz")
    legacy_server.add_fault("ra=35.5000000", "bands", times=-1, bands="irg")
    legacy_server.add_fault("dec=10.0040000", "unlabelled", times=-1)
    pre = {**PRE, "bands": ["g", "r", "i"]}
    with survey.cutouts(pre, options) as svc:
        results = _fetch(svc, [_req(legacy_server, i) for i in range(3)])
    assert results[0].status == "fetch-failed: cutout holds bands grz, asked gri"
    assert results[0].image is None
    assert legacy_server.count() == options["attempts"] + 2
    for row in (1, 2):
        assert results[row].status == "ok"
    g = legacy_server.galaxies[2]  # alone in its stamp: each plane holds its band's flux
    for c, band in enumerate("gri"):
        assert results[2].image[c].sum() == pytest.approx(g.flux[band], rel=0.01)
    peak = [results[1].image[c].max() for c in range(3)]
    assert peak == sorted(peak)  # galaxy 1 is brighter in g < r < i, as asked, unlabelled


def test_failures_after_retries_become_statuses(survey, legacy_server, options):
    legacy_server.add_fault("ra=35.5000000", "truncate", times=-1)
    legacy_server.add_fault("dec=10.0040000", "503", times=-1)
    with survey.cutouts(PRE, options) as svc:
        results = _fetch(svc, [_req(legacy_server, i) for i in range(3)])
        summary = svc.summary()
    assert results[0].status == "ok"
    assert results[1].status == "fetch-failed: HTTP 503"
    assert results[2].status == "fetch-failed: corrupt cutout (ValueError)"
    assert legacy_server.count() == 1 + 2 * options["attempts"]
    assert "2 failed after retries" in summary


def test_a_service_failing_every_request_stops_after_the_failure_budget(survey, legacy_server,
                                                                         options):
    legacy_server.add_fault("cutout.fits", "503", times=-1)
    reqs = [_req(legacy_server, i % 3, row=i) for i in range(12)]
    with survey.cutouts(PRE, {**options, "workers": 1, "max_failed_requests": 2}) as svc:
        results = _fetch(svc, reqs)
        failing = svc.failing
    statuses = [results[i].status for i in range(12)]
    assert statuses[:2] == ["fetch-failed: HTTP 503"] * 2
    assert statuses[2:] == ["fetch-failed: service failing"] * 10
    assert legacy_server.count("cutout.fits") == 2 * options["attempts"]  # not 12 x 3
    assert failing is not None and "2 requests in a row" in failing and "HTTP 503" in failing


def test_a_redirect_to_another_host_is_refused_in_one_line(survey, legacy_server, options):
    from fake_legacysurvey import FakeLegacySurvey

    elsewhere = FakeLegacySurvey().start()
    url = elsewhere.url
    try:
        legacy_server.add_fault("cutout.fits", "redirect", location=url[:-7])
        with (survey.cutouts(PRE, {**options, "workers": 1}) as svc,
              pytest.raises(GalmergeError) as info):
            _fetch(svc, [_req(legacy_server, 0)])
        assert elsewhere.count() == 0
    finally:
        elsewhere.stop()
    message = str(info.value)
    assert f"redirected to {url}/cutout.fits?..." in message and "\n" not in message
    assert "another host" in message and "GALMERGE_LEGACYSURVEY_URL" in message
    # within the same host a redirect is followed
    legacy_server.add_fault("cutout.fits", "redirect", location=legacy_server.url[:-7])
    with survey.cutouts(PRE, options) as svc:
        assert _fetch(svc, [_req(legacy_server, 0)])[0].status == "ok"
    assert legacy_server.count("cutout.fits") == 3


def test_outside_footprint_and_bad_positions(survey, legacy_server, options):
    reqs = [CutoutRequest(0, 10.0, -45.0, "south"), CutoutRequest(1, math.nan, 0.0, "nan"),
            CutoutRequest(2, 12.0, 91.0, "pole"), _req(legacy_server, 0, row=3)]
    with survey.cutouts(PRE, options) as svc:
        results = _fetch(svc, reqs)
    assert results[0].status == "no-coverage" and results[0].image is None
    assert results[1].status == results[2].status == "bad-coordinates"
    assert results[3].status == "ok"
    assert legacy_server.count() == 2


def test_a_stamp_past_the_footprints_edge_is_kept_below_the_edge_fraction(survey, legacy_server,
                                                                          options):
    """Zeros in every band are pixels the survey never imaged: up to max_edge_fraction of the
    stamp they are kept (and counted), beyond it the stamp is no-coverage, as for sdss."""
    half = 20 * 0.262 / 3600  # half a 41-pixel stamp, in degrees
    reqs = [CutoutRequest(0, 10.0, -20 + 0.4 * half, "30% outside"),
            CutoutRequest(1, 10.0, -20 - 0.4 * half, "70% outside")]
    with survey.cutouts(PRE, options) as svc:
        results = _fetch(svc, reqs)
        summary = svc.summary()
    assert results[0].status == "ok" and 0.2 < (results[0].image == 0).all(0).mean() < 0.4
    assert results[1].status == "no-coverage" and results[1].image is None
    assert "1 stamps partly past the footprint's edge kept" in summary
    with survey.cutouts(PRE, {**options, "max_edge_fraction": 0.8}) as svc:
        assert _fetch(svc, reqs[1:])[1].status == "ok"
        assert svc.cache_key.endswith(":edge0.8:v2")  # other answers, another cache


def test_many_galaxies_fetch_concurrently(survey, legacy_server, options):
    reqs = [CutoutRequest(i, 180.0 + i * 1e-4, 10.0, str(i)) for i in range(12)]
    with survey.cutouts({**PRE, "image_size": 16}, options) as svc:
        results = _fetch(svc, reqs)
    assert all(r.status == "ok" for r in results.values())
    assert legacy_server.count() == 12


@pytest.mark.parametrize(
    ("preprocess", "options_", "words"),
    [
        ({**PRE, "bands": ["u", "g", "r"]}, {}, "cannot produce bands u,g,r"),
        ({**PRE, "bands": ["g", "i", "z"]}, {"layer": "ls-dr9"}, "it has g,r,z"),
        ({**PRE, "image_source": "jpeg"}, {}, "image_source 'jpeg'"),
        ({**PRE, "image_size": 2}, {}, "2-pixel stamps"),
        (PRE, {"timeout": "soon"}, "option 'timeout' of legacysurvey must be float"),
        (PRE, {"timeout": 0}, "bad legacysurvey option (timeout must be a positive number"),
    ],
)
def test_impossible_models_are_refused_in_one_line(survey, preprocess, options_, words):
    with pytest.raises(GalmergeError) as info:
        survey.cutouts(preprocess, options_)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("legacysurvey?layr=ls-dr9",
         "legacysurvey: unknown option 'layr' (did you mean 'layer'?); valid options: layer"),
        ("legacysurvey?timout=5", "legacysurvey: unknown option 'timout'"),
        ("legacysurvey?sleep=1", "legacysurvey: unknown option 'sleep'"),
        ("legacysurvey?workers=0", "legacysurvey: option workers must be >= 1, got 0"),
        ("legacysurvey?attempts=two", "option 'attempts' of legacysurvey must be int"),
        ("legacysurvey?max_edge_fraction=1.5", "option max_edge_fraction must be >= 0 and <= 1"),
        ("legacysurvey?backoff=inf", "legacysurvey: option backoff must be >= 0, got inf"),
    ],
)
def test_unknown_options_wrong_types_and_bounds_are_one_line_errors(survey, spec, words):
    """The survey declares its options: a misspelt one was once ignored (layr=ls-dr9 left the
    layer at ls-dr10), and an out-of-range one clamped or taken as it came."""
    from galmerge.data.datasets import parse_survey_spec

    _, _, given = parse_survey_spec(spec)
    with pytest.raises(GalmergeError) as info:
        survey.cutouts(PRE, given)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_cache_key_names_layer_bands_size_and_scale(survey):
    with survey.cutouts(PRE, {}) as svc:
        assert svc.cache_key == "legacysurvey:ls-dr10:g,r,z:41px:0.2620arcsec:v2"
