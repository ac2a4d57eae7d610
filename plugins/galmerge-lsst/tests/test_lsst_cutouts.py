"""galmerge-lsst: discovery, then stamps through a loopback RSP (TAP, DataLink, SODA)."""

from __future__ import annotations

import csv
import math
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from galmerge.errors import GalmergeError
from galmerge.plugin.cutouts import CutoutRequest

try:
    metadata.distribution("galmerge-lsst")
    INSTALLED = True
except metadata.PackageNotFoundError:  # run from a checkout: import the package from its folder
    INSTALLED = False
    sys.path.insert(0, str(Path(__file__).parents[1]))

PRE = {"bands": ["g", "r", "i"], "image_size": 41, "pixel_scale_arcsec": 0.2,
       "image_source": "frames"}


@pytest.fixture
def survey():
    """The `lsst` survey record, from the entry point when the plugin is installed."""
    from galmerge.plugin.manager import get_plugin_manager

    pm = get_plugin_manager()
    if not INSTALLED:
        import galmerge_lsst.plugin as module

        pm.register(module, name="lsst")
    return pm.get("surveys", "lsst")


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits between tries, recorded instead of slept."""
    import galmerge_lsst.cutouts as module

    waits: list[float] = []
    monkeypatch.setattr(module, "retry_sleep", waits.append)
    return waits


@pytest.fixture
def options(sleeps) -> dict:
    return {"backoff": 0.001, "attempts": 3, "timeout": 5.0, "workers": 2}


def _fetch(service, reqs):
    out = {r.row: r for r in service.fetch(reqs)}
    assert sorted(out) == sorted(r.row for r in reqs)
    return out


def _req(server, i: int, row: int | None = None) -> CutoutRequest:
    g = server.galaxies[i]
    return CutoutRequest(i if row is None else row, g.ra, g.dec, f"g{i}")


@pytest.mark.skipif(not INSTALLED, reason="pip install ./plugins/galmerge-lsst")
def test_discovered_through_its_entry_point_and_can_be_blocked(monkeypatch):
    from galmerge.plugin.manager import get_plugin_manager, reset_plugin_manager

    pm = get_plugin_manager()
    assert pm.get("surveys", "lsst").cutouts is not None
    assert pm.owner("surveys", "lsst").distribution == "galmerge-lsst"
    monkeypatch.setenv("GALMERGE_DISABLE_PLUGINS", "lsst")
    reset_plugin_manager()
    with pytest.raises(GalmergeError, match="unknown survey 'lsst'"):
        get_plugin_manager().get("surveys", "lsst")


def test_stamps_through_tap_datalink_and_soda_in_nanomaggies(survey, rsp, options):
    pre = {**PRE, "bands": ["i", "g", "r"], "image_size": 40}
    with survey.cutouts(pre, options) as svc:
        results = _fetch(svc, [_req(rsp, 0), _req(rsp, 3)])
    for row in (0, 3):
        image = results[row].image
        assert results[row].status == "ok" and image.shape == (3, 40, 40)
        assert image.dtype == np.float32
        for c, band in enumerate("igr"):
            # an even stamp: the galaxy sits on the corner of the four central pixels
            assert image[c, 19:21, 19:21].min() == pytest.approx(image[c].max(), rel=1e-3)
            assert image[c].sum() == pytest.approx(rsp.galaxies[row].flux[band], rel=0.01)
    tap = [q["QUERY"] for path, q, _ in rsp.seen if path.endswith("/tap/sync")]
    assert any("lsst_band IN ('i', 'g', 'r')" in a and "POINT('ICRS', 53.1000000, -28.1000000)"
               in a for a in tap)
    cut = [q for path, q, _ in rsp.seen if path.endswith("/cutout/sync")]
    assert len(cut) == 6 and all(q["ID"].startswith("ivo://org.rubinobs/usdac/lsst-dp1") for q in cut)
    radius = float(cut[0]["CIRCLE"].split()[2]) * 3600
    assert 40 * 0.2 / 2 * math.sqrt(2) <= radius <= 40 * 0.2  # covers the stamp, not much more
    assert {auth for *_, auth in rsp.seen} == {f"Bearer {rsp.token}"}


def test_units_njy_and_datalink_documents_reused(survey, rsp, options):
    with survey.cutouts({**PRE, "bands": ["r"]}, {**options, "units": "nJy"}) as svc:
        results = _fetch(svc, [_req(rsp, 0), _req(rsp, 1)])
        summary = svc.summary()
    assert results[0].image.sum() == pytest.approx(20.0 * 3631, rel=0.01)
    # the two galaxies share patch 14: its DataLink document is fetched once, even though two
    # workers want it at the same moment
    assert rsp.count("/datalink/") == 1 and "reused 1 times" in summary


def test_rotated_coadd_is_resampled_north_up_east_left(survey, monkeypatch, options):
    from fake_rsp import FakeRsp, Galaxy, Patch

    a = Galaxy(150.0, 2.0, {"g": 10.0})
    b = Galaxy(150.0, 2.0 + 4.0 / 3600, {"g": 5.0})  # 4" north
    c = Galaxy(150.0 + 3.5 / 3600 / math.cos(math.radians(2.0)), 2.0, {"g": 4.0})  # 3.5" east
    server = FakeRsp(patches=[Patch(9000, 1, 150.0, 2.0, rotation_deg=25.0, bands="g")],
                     galaxies=[a, b, c]).start()
    monkeypatch.setenv("GALMERGE_LSST_URL", server.url)
    monkeypatch.setenv("GALMERGE_RSP_TOKEN", server.token)
    try:
        pre = {**PRE, "bands": ["g"], "image_size": 61, "pixel_scale_arcsec": 0.25}
        with survey.cutouts(pre, options) as svc:
            image = _fetch(svc, [CutoutRequest(0, a.ra, a.dec, "a")])[0].image[0]
    finally:
        server.stop()
    peak = lambda r, col: np.unravel_index(np.argmax(image[r - 2 : r + 3, col - 2 : col + 3]),  # noqa: E731
                                           (5, 5))
    assert peak(30, 30) == (2, 2)
    assert peak(30 + 16, 30) == (2, 2)  # north is up: +16 rows of 0.25"
    assert peak(30, 30 - 14) == (2, 2)  # east is left: -14 columns
    assert image.sum() == pytest.approx(19.0, rel=0.02)  # flux conserved through resampling


def test_429_503_500_drop_and_truncation_are_retried(survey, rsp, options, sleeps):
    rsp.add_fault("tap/sync|POINT('ICRS', 53.1000000", "429", retry_after="4")
    rsp.add_fault("tap/sync|POINT('ICRS', 53.1000000", "500")
    rsp.add_fault("datalink|coadd-5063-14-r", "503", retry_after="2")
    rsp.add_fault("datalink|coadd-5063-14-r", "drop")
    rsp.add_fault("cutout/sync|coadd-5063-14-i", "truncate")
    with survey.cutouts(PRE, {**options, "workers": 1}) as svc:
        results = _fetch(svc, [_req(rsp, 0)])
        summary = svc.summary()
    assert results[0].status == "ok"
    assert 4.0 in sleeps and 2.0 in sleeps
    assert (rsp.count("tap/sync"), rsp.count("datalink"), rsp.count("cutout")) == (3, 5, 4)
    assert "HTTP 429" in summary and "HTTP 503" in summary and "none failed" in summary


def test_a_cutout_dripping_in_slower_than_the_deadline_is_given_up(survey, rsp, options):
    """Each read arrives within the timeout, the whole body never within the deadline: the
    transfer ends at the deadline instead of holding a worker."""
    rsp.add_fault("cutout/sync|coadd-5063-14-g", "drip", times=-1)
    t0 = time.monotonic()
    with survey.cutouts(PRE, {**options, "attempts": 1, "timeout": 2.0,
                              "deadline": 0.5}) as svc:
        results = _fetch(svc, [_req(rsp, 0)])
    assert results[0].status == "fetch-failed: timeout (body not complete after 0.5 s)"
    assert time.monotonic() - t0 < 10


def test_failures_after_retries_become_statuses(survey, rsp, options):
    rsp.add_fault("tap/sync|POINT('ICRS', 180.0000000", "503", times=-1)
    rsp.add_fault("cutout/sync|coadd-5063-14-g", "truncate", times=-1)
    with survey.cutouts(PRE, {**options, "tap_batch": 1}) as svc:
        results = _fetch(svc, [_req(rsp, 0), _req(rsp, 3), _req(rsp, 2)])
        summary = svc.summary()
    assert results[3].status == "fetch-failed: HTTP 503"
    assert results[0].status == "fetch-failed: corrupt cutout (ValueError)"
    assert results[2].status == "ok"
    assert rsp.count("tap/sync|") == 0 and rsp.count("tap/sync") == 3 + 2
    assert "2 failed after retries" in summary


def test_a_failing_cutout_service_stops_after_the_failure_budget_naming_its_host(survey, rsp,
                                                                                 options):
    rsp.add_fault("cutout/sync", "503", times=-1)
    with survey.cutouts(PRE, {**options, "workers": 1, "tap_batch": 1,
                              "max_failed_requests": 2}) as svc:
        results = _fetch(svc, [_req(rsp, i % 3, row=i) for i in range(6)])
        failing = svc.failing
    statuses = [results[i].status for i in range(6)]
    assert statuses[:2] == ["fetch-failed: HTTP 503"] * 2
    assert statuses[2:] == ["fetch-failed: service failing"] * 4
    assert rsp.count("cutout/sync") == 2 * options["attempts"]
    host = rsp.url.split("/")[2]
    assert failing is not None and failing.startswith(f"{host}: 2 requests in a row")


@pytest.mark.parametrize("userinfo", ["", "alice:s3cret@"])
def test_a_failing_soda_service_on_another_host_is_named_by_its_own_host(survey, rsp,
                                                                         options, userinfo):
    """The failure budget names the host of the DataLink descriptor's SODA service, not the
    RSP's, when the two differ, and never a user name or password its URL holds."""
    from fake_rsp import FakeRsp

    soda = FakeRsp(token=None).start()  # an open cutout service on another port
    soda.add_fault("cutout/sync", "503", times=-1)
    host = soda.url.split("/")[2]
    rsp.soda_base = soda.url.replace("://", f"://{userinfo}", 1)
    try:
        with survey.cutouts(PRE, {**options, "workers": 1, "tap_batch": 1,
                                  "max_failed_requests": 2}) as svc:
            results = _fetch(svc, [_req(rsp, 3, row=i) for i in range(3)])
            failing = svc.failing
    finally:
        soda.stop()
    assert [results[i].status for i in range(3)] == [
        "fetch-failed: HTTP 503", "fetch-failed: HTTP 503", "fetch-failed: service failing"]
    assert soda.count("cutout/sync") > 0 and rsp.count("cutout/sync") == 0
    assert failing is not None and failing.startswith(f"{host}: 2 requests in a row"), failing
    assert "alice" not in failing and "s3cret" not in failing


def test_a_refused_adql_query_is_a_status_with_the_services_words(survey, rsp, options):
    rsp.add_fault("tap/sync", "queryerror", times=-1)
    with survey.cutouts(PRE, options) as svc:
        results = _fetch(svc, [_req(rsp, 0), _req(rsp, 3)])
    assert {r.status for r in results.values()} == {
        "fetch-failed: TAP query refused (Column not found: lsst_band (in table ivoa.ObsCore))"}
    assert rsp.count("tap/sync") == 1  # not worth a retry


def test_a_tap_refusal_with_http_400_keeps_the_services_words(survey, rsp, options):
    """DALI lets a service send its VOTable error document with HTTP 400 (as the IVOA
    reference services do): the status carries its words, not only the code."""
    rsp.add_fault("tap/sync", "queryerror400", times=-1)
    with survey.cutouts(PRE, options) as svc:
        results = _fetch(svc, [_req(rsp, 0)])
    assert results[0].status == (
        "fetch-failed: HTTP 400 (Column not found: lsst_band (in table ivoa.ObsCore))")
    assert rsp.count("tap/sync") == 1


def test_no_coverage_missing_band_no_data_and_bad_positions(survey, rsp, options):
    rsp.add_fault("cutout/sync|coadd-5063-15-z", "nodata")
    reqs = [CutoutRequest(0, 10.0, 45.0, "outside"), _req(rsp, 3, row=1),  # patch 7000: g,r,i
            _req(rsp, 2, row=2), CutoutRequest(3, math.nan, 0.0, "nan"),
            CutoutRequest(4, 12.0, -91.0, "pole")]
    with survey.cutouts({**PRE, "bands": ["r", "z"]}, options) as svc:
        results = _fetch(svc, reqs)
    assert [results[i].status for i in range(5)] == ["no-coverage"] * 3 + ["bad-coordinates"] * 2
    assert all(results[i].image is None for i in range(5))
    assert rsp.count("tap/sync") == 1  # the three valid positions in one ObsCore query
    assert rsp.count("cutout") == 2  # only galaxy 2 is cut


def test_one_obscore_query_per_batch_gives_the_same_stamps_as_one_per_galaxy(survey, rsp,
                                                                            options):
    reqs = [_req(rsp, i) for i in range(4)] + [CutoutRequest(4, 10.0, 45.0, "outside")]
    with survey.cutouts(PRE, {**options, "tap_batch": 1}) as svc:
        single = _fetch(svc, reqs)
    assert rsp.count("tap/sync") == 5
    with survey.cutouts(PRE, {**options, "tap_batch": 3}) as svc:
        batched = _fetch(svc, reqs)
        summary = svc.summary()
    assert rsp.count("tap/sync") == 5 + 2 and "2 ObsCore queries" in summary
    assert [batched[i].status for i in range(5)] == ["ok"] * 4 + ["no-coverage"]
    for i in range(5):  # galaxy 1 lies in patches 14 and 15: both ways pick 14, nearest
        assert batched[i].status == single[i].status
        if single[i].image is not None:
            np.testing.assert_array_equal(batched[i].image, single[i].image)


def test_s_region_polygons_parse_and_contain_points_across_ra_zero():
    from galmerge_lsst.cutouts import parse_polygon, polygon_contains

    stcs = parse_polygon("POLYGON ICRS 359.99 -0.01 0.01 -0.01 0.01 0.01 359.99 0.01")
    dali = parse_polygon(np.array([359.99, -0.01, 0.01, -0.01, 0.01, 0.01, 359.99, 0.01]))
    assert stcs == dali and len(stcs) == 4
    for poly in (stcs, list(reversed(stcs))):  # either winding
        assert polygon_contains(poly, 0.0, 0.0) and polygon_contains(poly, 359.995, 0.005)
        assert not polygon_contains(poly, 0.02, 0.0) and not polygon_contains(poly, 180.0, 0.0)
    for bad in ("CIRCLE ICRS 1 2 3", "POLYGON ICRS 1 2 3", "POLYGON 1 2 3 4 5 6 UNION x", None):
        assert parse_polygon(bad) is None


def test_no_token_is_refused_before_any_request(survey, rsp, options, monkeypatch):
    monkeypatch.delenv("GALMERGE_RSP_TOKEN")
    with pytest.raises(GalmergeError) as info:
        survey.cutouts(PRE, options)
    assert "GALMERGE_RSP_TOKEN" in str(info.value) and "\n" not in str(info.value)
    assert rsp.count() == 0
    with pytest.raises(GalmergeError, match="takes no token option"):
        survey.cutouts(PRE, {**options, "token": rsp.token})


def test_the_rsp_answers_401_without_the_bearer_header(rsp):
    import requests

    answer = requests.get(f"{rsp.url}/tap/sync", params={"QUERY": "x"}, timeout=5)
    assert answer.status_code == 401 and "Bearer" in answer.headers["WWW-Authenticate"]


def test_the_notebook_access_token_is_used_when_ours_is_unset(survey, rsp, options, monkeypatch):
    monkeypatch.delenv("GALMERGE_RSP_TOKEN")
    monkeypatch.setenv("ACCESS_TOKEN", rsp.token)
    with survey.cutouts(PRE, options) as svc:
        assert _fetch(svc, [_req(rsp, 3)])[3].status == "ok"


def test_a_wrong_token_stops_the_run_in_one_line_without_showing_it(survey, rsp, options,
                                                                    monkeypatch):
    monkeypatch.setenv("GALMERGE_RSP_TOKEN", "wrong-token-do-not-print")
    with survey.cutouts(PRE, {**options, "workers": 1}) as svc:
        with pytest.raises(GalmergeError) as info:
            _fetch(svc, [_req(rsp, 0)])
        text = f"{info.value} {svc!r} {svc.summary()}"
    message = str(info.value)
    assert "HTTP 401" in message and "GALMERGE_RSP_TOKEN" in message and "\n" not in message
    assert "wrong-token" not in text
    assert rsp.count() == 1  # a refused token is not retried


def test_the_token_goes_to_the_configured_host_only(survey, rsp, options):
    from fake_rsp import FakeRsp

    elsewhere = FakeRsp(token="another-service").start()
    rsp.soda_base = elsewhere.url  # another port: another origin
    try:
        with (survey.cutouts(PRE, {**options, "workers": 1}) as svc,
              pytest.raises(GalmergeError, match="HTTP 401")):
            _fetch(svc, [_req(rsp, 3)])
    finally:
        elsewhere.stop()
    assert elsewhere.count("cutout") == 1
    assert [auth for *_, auth in elsewhere.seen] == [None]


def test_a_soda_redirect_to_the_object_store_is_followed_without_the_token(survey, rsp,
                                                                            options):
    # as data.lsst.cloud does: SODA sync answers 303 to a signed URL on another host
    from fake_rsp import FakeRsp

    store = FakeRsp(token="the-store-wants-none").start()
    host = store.url.split("/")[2]
    rsp.results_to = store
    try:
        with survey.cutouts(PRE, {**options, "redirect_hosts": f"example.org, {host}"}) as svc:
            assert _fetch(svc, [_req(rsp, 3)])[3].status == "ok"
        assert store.count("/results/") == 3  # one per band, all through the redirect
        assert {auth for *_, auth in store.seen} == {None}  # the token stayed on the RSP
        with (survey.cutouts(PRE, {**options, "workers": 1}) as svc,  # default: GCS only
              pytest.raises(GalmergeError) as info):
            _fetch(svc, [_req(rsp, 3)])
        assert store.count("/results/") == 3  # refused before the store was contacted
    finally:
        store.stop()
    message = str(info.value)
    assert f"redirected to http://{host}/api/results/" in message and "\n" not in message
    assert "Signature" not in message and rsp.token not in message
    assert "another host" in message and "redirect_hosts" in message


@pytest.mark.parametrize(
    ("preprocess", "options_", "words"),
    [
        ({**PRE, "bands": ["F814W", "g"]}, {}, "cannot provide this model's bands F814W,g"),
        ({**PRE, "bands": ["R", "G", "B"], "image_source": "jpeg"}, {}, "image_source 'jpeg'"),
        ({**PRE, "image_size": 2}, {}, "2-pixel stamps"),
        (PRE, {"timeout": "soon"}, "option 'timeout' of lsst must be float"),
        (PRE, {"timeout": 0}, "bad lsst option (timeout must be a positive number"),
        (PRE, {"collection": "x' OR 1=1 --"}, "must be a plain name"),
        (PRE, {"units": "ADU"}, "option units must be one of nanomaggies, nJy"),
    ],
)
def test_impossible_models_are_refused_in_one_line(survey, rsp, preprocess, options_, words):
    with pytest.raises(GalmergeError) as info:
        survey.cutouts(preprocess, options_)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert rsp.count() == 0


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("lsst?timout=5",
         "lsst: unknown option 'timout' (did you mean 'timeout'?); valid options: collection"),
        ("lsst?wokers=64", "lsst: unknown option 'wokers'"),
        ("lsst?sleep=1", "lsst: unknown option 'sleep'"),
        ("lsst?workers=0", "lsst: option workers must be >= 1, got 0"),
        ("lsst?workers=many", "option 'workers' of lsst must be int, got 'many'"),
        ("lsst?jitter=2", "lsst: option jitter must be >= 0 and <= 1, got 2.0"),
        ("lsst?max_edge_fraction=nan", "option max_edge_fraction must be >= 0 and <= 1"),
        ("lsst?tap_batch=0", "lsst: option tap_batch must be >= 1, got 0"),
    ],
)
def test_unknown_options_wrong_types_and_bounds_are_one_line_errors(survey, rsp, spec, words):
    """The survey declares its options: a misspelt one was once ignored (timout=5 left the
    timeout at 60 s), and an out-of-range one clamped or taken as it came."""
    from galmerge.data.datasets import parse_survey_spec

    _, _, given = parse_survey_spec(spec)
    with pytest.raises(GalmergeError) as info:
        survey.cutouts(PRE, given)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert rsp.seen == []


def test_cache_key_names_release_bands_size_scale_and_units(survey, rsp):
    with survey.cutouts(PRE, {}) as svc:
        assert svc.cache_key == "lsst:LSST.DP1:lsst.deep_coadd:g,r,i:41px:0.2000arcsec:nanomaggies:v2"
    with survey.cutouts(PRE, {"max_edge_fraction": 0.2}) as svc:
        assert svc.cache_key.endswith(":nanomaggies:edge0.2:v2")


# ----------------------------------------------------------------------------------------------
# End to end: `galmerge classify --survey lsst` with a tiny trained model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """One step of training, source synthetic HST-like, target synthetic SDSS g,r,i."""
    import os

    import galmerge

    run = tmp_path_factory.mktemp("lsst-model") / "run"
    old = os.environ.get("GALMERGE_DATA")
    os.environ["GALMERGE_DATA"] = str(run.parent / "data")
    try:
        galmerge.train(
            source="synthetic:pristine?n=16&size=16&cache=false",
            target="synthetic:sdss?n=16&size=16&cache=false&seed=1", strategy="none",
            backbone="deepmerge", epochs=1, max_steps_per_epoch=1, batch_size=8, device="cpu",
            quiet=True, patience=0, run_dir=run,
        )
    finally:
        if old is None:
            os.environ.pop("GALMERGE_DATA", None)
        else:
            os.environ["GALMERGE_DATA"] = old
    return run


@pytest.mark.slow
def test_classify_a_catalog_through_the_loopback_rsp(survey, rsp, tiny_model, tmp_path):
    import torch
    from click.testing import CliRunner

    from galmerge.cli import cli
    from galmerge.io.hdf5 import write_imageset
    from galmerge.plugin.imageset import ImageSet

    rsp.add_fault("tap/sync|POINT('ICRS', 53.1000000", "429", retry_after="0")
    cat = tmp_path / "cat.csv"
    rows = [("1", 53.1, -28.1), ("2", 180.0, 10.0), ("3", 10.0, 45.0), ("4", "nan", 0.0),
            ("5", 53.105, -28.07)]
    cat.write_text("id,ra,dec\n" + "".join(f"{i},{ra},{dec}\n" for i, ra, dec in rows))
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        cli, ["classify", str(cat), "--model", str(tiny_model), "--survey", "lsst?backoff=0.001",
              "--output", str(out), "--device", "cpu", "--cache", str(tmp_path / "cache.h5")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [r["status"] for r in got] == ["ok", "ok", "no-coverage", "bad-coordinates", "ok"]
    assert [r["id"] for r in got] == ["1", "2", "3", "4", "5"]
    p = [float(r["p_merger"]) if r["p_merger"] else math.nan for r in got]
    assert all(0.0 <= p[i] <= 1.0 for i in (0, 1, 4)) and math.isnan(p[2]) and math.isnan(p[3])

    # The same stamps, fetched by the service and classified from an HDF5 image file, give the
    # same p_merger: the catalog path classified exactly what the RSP served.
    with survey.cutouts({"bands": ["g", "r", "i"], "image_size": 16, "pixel_scale_arcsec": 0.396,
                         "image_source": "frames"}, {}) as svc:
        stamps = {r.row: r.image for r in svc.fetch([CutoutRequest(i, float(rows[i][1]),
                                                                   float(rows[i][2]), rows[i][0])
                                                     for i in (0, 1, 4)])}
    images = torch.from_numpy(np.stack([stamps[i] for i in (0, 1, 4)]))
    write_imageset(tmp_path / "stamps.h5", ImageSet(
        images=images, labels=torch.full((3,), -1), ids=np.array(["1", "2", "5"]),
        bands=("g", "r", "i"), survey="lsst", pixel_scale_arcsec=0.396))
    again = tmp_path / "again.csv"
    result2 = CliRunner().invoke(
        cli, ["classify", str(tmp_path / "stamps.h5"), "--model", str(tiny_model), "--output",
              str(again), "--device", "cpu", "--quiet"], catch_exceptions=False)
    assert result2.exit_code == 0, result2.output
    with open(again, newline="") as fh:
        direct = [float(r["p_merger"]) for r in csv.DictReader(fh)]
    assert direct == pytest.approx([p[0], p[1], p[4]], abs=1e-5)

    # The token is in no output, log or cache file, and nowhere on screen.
    secret = rsp.token.encode()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert rsp.token not in result.output + result2.output


@pytest.mark.slow
def test_a_max_edge_fraction_run_does_not_decide_later_default_runs_from_the_cache(
        rsp, tiny_model, tmp_path):
    """A no-coverage answer cached under max_edge_fraction=0.2 is not served to a later default
    run (0.5), nor the default run's ok stamp to a later 0.2 run."""
    from click.testing import CliRunner
    from fake_rsp import Galaxy

    from galmerge.cli import cli

    # patch 7000/3 ends at dec 10.02: a 16px x 0.396" stamp 0.72" inside is ~38% past the edge
    dec = 10.02 - 0.0002
    rsp.galaxies.append(Galaxy(180.0, dec, {"g": 3.0, "r": 4.0, "i": 5.0}))
    cat = tmp_path / "cat.csv"
    cat.write_text(f"id,ra,dec\n1,180.0,{dec}\n")

    def status(spec: str, name: str) -> str:
        out = tmp_path / name
        result = CliRunner().invoke(
            cli, ["classify", str(cat), "--model", str(tiny_model), "--survey", spec,
                  "--output", str(out), "--device", "cpu", "--quiet"],
            catch_exceptions=False)  # the default cache, under GALMERGE_DATA
        assert result.exit_code == 0, result.output
        with open(out, newline="") as fh:
            return next(csv.DictReader(fh))["status"]

    assert status("lsst?backoff=0.001&max_edge_fraction=0.2", "strict.csv") == "no-coverage"
    assert status("lsst?backoff=0.001", "default.csv") == "ok"
    assert status("lsst?backoff=0.001&max_edge_fraction=0.2", "strict2.csv") == "no-coverage"


@pytest.mark.parametrize("where", ["tap/sync", "datalink|coadd-5063-14-g"])
def test_a_tap_or_datalink_answer_dripping_in_is_given_up_at_the_deadline(survey, rsp, options,
                                                                          where):
    """pyvo reads these answers with no bound; they go through read_body and its deadline."""
    rsp.add_fault(where, "drip", times=-1)
    t0 = time.monotonic()
    with survey.cutouts(PRE, {**options, "attempts": 1, "timeout": 2.0, "deadline": 0.5,
                              "workers": 1}) as svc:
        results = _fetch(svc, [_req(rsp, 0)])
    assert results[0].status == "fetch-failed: timeout (body not complete after 0.5 s)"
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("where", ["tap/sync", "datalink|coadd-5063-14-g",
                                   "cutout/sync|coadd-5063-14-g"])
def test_headers_dripping_in_are_given_up_at_the_deadline(survey, rsp, options, where):
    """A server dripping its headers (each byte within the read timeout) is cut off at the
    transfer deadline, which runs from sending the request, for TAP, DataLink and SODA."""
    rsp.add_fault(where, "headerdrip", times=-1)
    t0 = time.monotonic()
    with survey.cutouts(PRE, {**options, "attempts": 1, "timeout": 2.0, "deadline": 0.5,
                              "workers": 1}) as svc:
        results = _fetch(svc, [_req(rsp, 0)])
    assert results[0].status == "fetch-failed: timeout (headers not complete after 0.5 s)"
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("where", ["lsst option url", "GALMERGE_LSST_URL"])
def test_a_url_with_user_info_is_refused_before_any_request(survey, rsp, options, monkeypatch,
                                                             where):
    """requests sends a URL's user info as basic auth in place of the Bearer token: every
    request was refused (HTTP 401) and the run blamed the token. The URL is refused in one line
    naming where it came from and the fix, never showing the password."""
    secret = rsp.url.replace("://", "://al:s3cretPW@")
    given = {**options, "url": secret} if where == "lsst option url" else options
    if where == "GALMERGE_LSST_URL":
        monkeypatch.setenv("GALMERGE_LSST_URL", secret)
    with pytest.raises(GalmergeError) as refused:
        survey.cutouts(PRE, given)
    message = str(refused.value)
    shown = rsp.url.replace("://", "://***@")
    assert message.startswith(f"{where} = '{shown}': its user name or password would be sent "
                              "in place of the RSP token"), message
    assert "remove the 'USER:PASSWORD@' part" in message and "GALMERGE_RSP_TOKEN" in message
    assert "s3cretPW" not in message and "al:" not in message and "\n" not in message
    assert rsp.count() == 0
    # the same address without the user info: the server gets the token, and answers
    monkeypatch.setenv("GALMERGE_LSST_URL", rsp.url)
    with survey.cutouts(PRE, {**options, "url": rsp.url}) as svc:
        assert _fetch(svc, [_req(rsp, 3)])[3].status == "ok"
        assert "al:" not in repr(svc) and rsp.url.split("://")[1] in repr(svc)
    assert {auth for *_, auth in rsp.seen} == {f"Bearer {rsp.token}"}


@pytest.mark.parametrize(("given", "env", "words"), [
    ({"url": "ftp://al:s3cretPW@127.0.0.1/api"}, None,
     "lsst option url = 'ftp://***@127.0.0.1/api': give an http(s) address with a host (and a "
     "valid port), e.g. https://data.lsst.cloud/api, or unset it"),
    ({"url": "https://127.0.0.1:99999/api"}, None, "lsst option url = 'https://127.0.0.1:99999"),
    ({}, "notaurl", "GALMERGE_LSST_URL = 'notaurl': give an http(s) address with a host"),
    ({}, "https://:443/api", "GALMERGE_LSST_URL = 'https://:443/api': give an http(s) address"),
])
def test_a_url_that_is_no_http_address_is_one_line_naming_its_option_or_variable(
        survey, rsp, options, monkeypatch, given, env, words):
    """The same check, and the same line, as sdss's skyserver_url and sas_url
    (galmerge.check_service_url); it named neither the option nor the variable before."""
    if env is not None:
        monkeypatch.setenv("GALMERGE_LSST_URL", env)
    with pytest.raises(GalmergeError) as refused:
        survey.cutouts(PRE, {**options, **given})
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert "s3cretPW" not in str(refused.value) and rsp.count() == 0


def _obscore_votable(cols: list[str], row: list[str]) -> bytes:
    fields = "".join(f'<FIELD name="{c}" datatype="char" arraysize="*"/>' for c in cols)
    cells = "".join(f"<TD>{v}</TD>" for v in row)
    return ('<?xml version="1.0"?><VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3" '
            f'version="1.3"><RESOURCE type="results"><TABLE>{fields}<DATA><TABLEDATA><TR>'
            f"{cells}</TR></TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>").encode()


@pytest.mark.parametrize("case, reason", [
    ("missing-column", "malformed ObsCore answer (no column lsst_tract)"),
    ("s_ra-text", "malformed ObsCore answer (could not convert string to float: 'n/a')"),
    ("bad-service-def", "DataLink #cutout names no service descriptor"),
])
def test_malformed_tap_and_datalink_answers_are_statuses_not_plugin_bugs(survey, rsp, options,
                                                                         case, reason):
    from fake_rsp import DATALINK

    g = rsp.galaxies[0]
    link = f"{rsp.url}/datalink/links?ID=x"
    cols = ["lsst_band", "lsst_tract", "lsst_patch", "s_ra", "s_dec", "access_url", "s_region"]
    region = f"POLYGON ICRS {g.ra - .1} {g.dec - .1} {g.ra + .1} {g.dec - .1} {g.ra + .1} " \
             f"{g.dec + .1} {g.ra - .1} {g.dec + .1}"
    rows = [[b, "1", "2", str(g.ra), str(g.dec), link, region] for b in "gri"]
    if case == "missing-column":
        cols, rows = cols[:1] + cols[2:], [r[:1] + r[2:] for r in rows]
    if case == "s_ra-text":
        rows[0][3] = "n/a"
    body = _obscore_votable(cols, rows[0]).replace(
        b"</TR></TABLEDATA>",
        b"</TR>" + b"".join(b"<TR>" + "".join(f"<TD>{v}</TD>" for v in r).encode() + b"</TR>"
                            for r in rows[1:]) + b"</TABLEDATA>")
    rsp.obscore = lambda adql: body
    rsp.find = lambda image_id: (rsp.patches[0], "g")
    rsp.datalink = lambda image_id: DATALINK.format(id="x", base=rsp.url).replace(
        'ID="cutout-sync"', 'ID="other"' if case == "bad-service-def" else 'ID="cutout-sync"'
    ).encode()
    with survey.cutouts(PRE, options) as svc:
        results = _fetch(svc, [_req(rsp, 0)])
    assert results[0].status == f"fetch-failed: {reason}"
    assert rsp.count("tap/sync") == 1  # the same answer is not asked for again
