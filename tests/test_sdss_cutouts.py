"""SDSS cutouts end to end through the service API against a loopback server speaking SDSS."""

from __future__ import annotations

import math
import os
import time
from email.utils import formatdate
from pathlib import Path

import numpy as np
import pytest
from fake_sdss import (
    FakeSdss,
    default_sky,
    fake_sdss_fixture,  # noqa: F401  (the `fake_sdss` fixture)
    rendered_galaxies,
)

from galmerge.data.datasets import parse_survey_spec
from galmerge.errors import GalmergeError
from galmerge.plugin.cutouts import CutoutRequest
from galmerge.plugin.manager import get_plugin_manager
from galmerge.surveys.sdss import cutouts as sdss_cutouts
from galmerge.surveys.sdss.cutouts import FrameDiskCache, make_cutout_service

FRAMES = {"bands": ["g", "r", "i"], "image_size": 31, "pixel_scale_arcsec": 0.396,
          "image_source": "frames"}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between tries, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(sdss_cutouts, "retry_sleep", waits.append)
    return waits


@pytest.fixture
def options(tmp_path: Path, sleeps: list[float]) -> dict:
    """Fast, deterministic retry settings (no waits) and a private frame cache."""
    return {"backoff": 0.001, "attempts": 3, "timeout": 2.0,
            "frame_cache_dir": str(tmp_path / "frames"), "workers": 3}


def _service(preprocess: dict, options: dict):
    return get_plugin_manager().get("surveys", "sdss").cutouts(preprocess, options)


def _requests(fake: FakeSdss, idx=None) -> list[CutoutRequest]:
    idx = range(len(fake.galaxies)) if idx is None else idx
    return [CutoutRequest(i, fake.galaxies[i].ra, fake.galaxies[i].dec, f"g{i}") for i in idx]


def _fetch(service, reqs) -> dict[int, object]:
    results = {r.row: r for r in service.fetch(reqs)}
    assert sorted(results) == sorted(r.row for r in reqs)  # one result per request
    return results


def _peak(plane: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(plane), plane.shape))


def test_stamps_centre_each_galaxy_with_its_flux_in_band_order(fake_sdss, options):
    pre = {**FRAMES, "bands": ["i", "g", "r"]}
    with _service(pre, options) as svc:
        results = _fetch(svc, _requests(fake_sdss))
    for i, g in enumerate(fake_sdss.galaxies):
        r = results[i]
        assert r.status == "ok"
        assert r.image.shape == (3, 31, 31) and r.image.dtype == np.float32
        for c, band in enumerate(["i", "g", "r"]):
            assert _peak(r.image[c]) == (15, 15)
            # a sigma <= 1.2" Gaussian fits in a 12" stamp: the sum is its flux in nanomaggies
            assert r.image[c].sum() == pytest.approx(g.flux[band], rel=0.01)


@pytest.mark.parametrize(
    ("centre", "other", "scale", "size"),
    [(0, 1, 0.396, 181), (0, 1, 0.8, 91), (4, 5, 0.396, 121), (4, 5, 1.0, 55)],
    ids=["sdss-like-native", "sdss-like-resampled", "rotated-native", "rotated-resampled"],
)
def test_north_up_east_left_at_any_pixel_scale(fake_sdss, options, centre, other, scale, size):
    a, b = fake_sdss.galaxies[centre], fake_sdss.galaxies[other]
    pre = {**FRAMES, "bands": ["r"], "image_size": size, "pixel_scale_arcsec": scale}
    with _service(pre, options) as svc:
        image = _fetch(svc, [CutoutRequest(0, a.ra, a.dec, "a")])[0].image[0]
    c = (size - 1) // 2
    north = (b.dec - a.dec) * 3600 / scale
    east = (b.ra - a.ra) * math.cos(math.radians(a.dec)) * 3600 / scale
    # FITS pixel order: rows grow to the north, columns grow to the west
    row, col = round(c + north), round(c - east)
    assert _peak(image[c - 4 : c + 5, c - 4 : c + 5]) == (4, 4)
    assert _peak(image[row - 4 : row + 5, col - 4 : col + 5]) in {
        (4 + dr, 4 + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
    }
    # light is where the galaxies are, and its total is conserved at any pixel scale
    for g, (r0, c0) in [(a, (c, c)), (b, (row, col))]:
        peak = g.flux["r"] * scale**2 / (2 * math.pi * g.sigma_arcsec**2)
        assert image[r0, c0] > 0.3 * peak
    inside, edge = 0.0, 0
    for g in fake_sdss.galaxies:
        off = max(abs(g.dec - a.dec), abs(g.ra - a.ra) * math.cos(math.radians(a.dec))) * 3600
        inside += g.flux["r"] if off < size * scale / 2 - 4 * g.sigma_arcsec else 0.0
        edge += abs(off - size * scale / 2) < 4 * g.sigma_arcsec
    assert edge == 0  # the sum below is exact only with no galaxy cut by the stamp edge
    assert image.sum() == pytest.approx(inside, rel=0.03)


def test_rendered_mergers_come_back_pixel_for_pixel(monkeypatch, options):
    """Galaxies drawn by galmerge's renderer, put in the sky on a real-looking frame, are cut
    out exactly as drawn: same pixels, same orientation, bands in the model's order."""
    fields, galaxies = default_sky()
    mergers = rendered_galaxies(fields[1], 3, seed=5)  # clear of the Gaussian galaxies
    with FakeSdss(fields, galaxies + mergers) as server:
        monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", server.url)
        monkeypatch.setenv("GALMERGE_SDSS_SAS_URL", server.sas_url)
        reqs = [CutoutRequest(i, g.ra, g.dec, g.name) for i, g in enumerate(mergers)]
        with _service({**FRAMES, "image_size": 41, "bands": ["i", "r", "g"]}, options) as svc:
            results = _fetch(svc, reqs)
    for i, g in enumerate(mergers):
        expected = np.stack([g.stamp[b] for b in "irg"])
        assert results[i].status == "ok"
        np.testing.assert_allclose(results[i].image, expected, rtol=1e-6, atol=1e-7)


def test_one_frame_download_per_field_and_band_then_disk_cache(fake_sdss, options):
    reqs = _requests(fake_sdss, [0, 1, 2, 3]) + [CutoutRequest(9, 150.001, 2.001, "near0")]
    with _service(FRAMES, options) as svc:
        first = _fetch(svc, reqs)
        second = _fetch(svc, reqs)
    assert all(r.status == "ok" for r in [*first.values(), *second.values()])
    for band in "gri":
        assert fake_sdss.count(f"frame-{band}-001000-1-0100") == 1  # 4 galaxies, one field
        assert fake_sdss.count(f"frame-{band}-001000-1-0101") == 1
    assert fake_sdss.count("frame-") == 6
    assert fake_sdss.count("x_results.aspx") == 1  # one lookup for 5 rows, then remembered
    # a new service (a new run) reads the frames from the disk cache
    with _service(FRAMES, options) as svc:
        third = _fetch(svc, reqs)
        assert "6 from disk cache" in svc.summary()
    assert fake_sdss.count("frame-") == 6
    np.testing.assert_array_equal(third[0].image, first[0].image)


def test_position_lookup_is_batched(fake_sdss, options):
    reqs = [CutoutRequest(i, 150.0 + 1e-6 * i, 2.0, str(i)) for i in range(30)]
    with _service(FRAMES, {**options, "resolve_batch": 25}) as svc:
        results = _fetch(svc, reqs)
    assert {r.status for r in results.values()} == {"ok"}
    assert fake_sdss.count("x_results.aspx") == 2


def test_http_429_retry_after_is_honoured(fake_sdss, options, sleeps):
    fake_sdss.add_fault("x_results.aspx", "429", retry_after="7")
    fake_sdss.add_fault("frame-g-", "429", retry_after=formatdate(time.time() + 30, usegmt=True))
    with _service(FRAMES, options) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0]))
        summary = svc.summary()
    assert results[0].status == "ok"
    assert 7.0 in sleeps  # delta-seconds form
    assert any(25 <= s <= 31 for s in sleeps)  # HTTP-date form
    assert fake_sdss.count("x_results.aspx") == 2
    assert "HTTP 429" in summary


def test_server_errors_are_retried_until_success(fake_sdss, options):
    fake_sdss.add_fault("frame-r-", "500", times=2)
    fake_sdss.add_fault("x_results.aspx", "503")
    with _service(FRAMES, options) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0]))
        summary = svc.summary()
    assert results[0].status == "ok"
    assert fake_sdss.count("frame-r-") == 3
    assert "2 HTTP 500" in summary and "none failed" in summary


@pytest.mark.parametrize("kind", ["drop", "corrupt", "truncate", "garbage"])
def test_damaged_downloads_are_fetched_again(fake_sdss, options, kind):
    fake_sdss.add_fault("frame-i-", kind)
    with _service(FRAMES, options) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0]))
    assert results[0].status == "ok"
    assert results[0].image[2].sum() == pytest.approx(30.0, rel=0.01)
    assert fake_sdss.count("frame-i-") == 2


@pytest.mark.parametrize("kind", ["garbage", "truncate", "drop"])
def test_damaged_lookup_answers_are_asked_again_not_taken_as_no_coverage(
    fake_sdss, options, kind
):
    fake_sdss.add_fault("x_results.aspx", kind)
    with _service(FRAMES, options) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0, 4]))
    assert {r.status for r in results.values()} == {"ok"}
    assert fake_sdss.count("x_results.aspx") == 2


def test_truncated_frame_fails_after_max_retries_others_still_ok(fake_sdss, options):
    fake_sdss.add_fault("frame-i-001000-1-0101", "truncate", times=-1)
    with _service(FRAMES, options) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0, 3, 4]))
        summary = svc.summary()
    assert results[3].status.startswith("fetch-failed: corrupt frame")
    assert results[3].image is None
    assert results[0].status == results[4].status == "ok"
    assert fake_sdss.count("frame-i-001000-1-0101") == options["attempts"]
    assert "1 failed after retries" in summary


def test_slow_responses_time_out_and_are_retried(fake_sdss, options):
    fake_sdss.add_fault("frame-g-", "slow", delay=1.5)
    with _service(FRAMES, {**options, "timeout": 0.4}) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0]))
        summary = svc.summary()
    assert results[0].status == "ok"
    assert "timeout" in summary


def test_lookup_failure_is_a_status_not_a_crash(fake_sdss, options):
    fake_sdss.add_fault("x_results.aspx", "500", times=-1)
    with _service(FRAMES, options) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0, 1]))
    assert {r.status for r in results.values()} == {"fetch-failed: HTTP 500"}


def test_outside_footprint_and_bad_positions(fake_sdss, options):
    reqs = [CutoutRequest(0, 10.0, -10.0, "far"), CutoutRequest(1, float("nan"), 2.0, "nan"),
            CutoutRequest(2, 400.0, 2.0, "ra"), CutoutRequest(3, 150.0, 2.0, "ok")]
    with _service(FRAMES, options) as svc:
        results = _fetch(svc, reqs)
    assert results[0].status == "no-coverage" and results[0].image is None
    assert results[1].status == results[2].status == "bad-coordinates"
    assert results[3].status == "ok"
    assert fake_sdss.count("frame-") == 3


def test_stamps_past_a_frame_edge_are_zero_filled_or_refused(monkeypatch, options):
    with FakeSdss(noise=0.01) as server:  # sky noise: no pixel on the frame is exactly 0
        monkeypatch.setenv("GALMERGE_SDSS_SKYSERVER_URL", server.url)
        monkeypatch.setenv("GALMERGE_SDSS_SAS_URL", server.sas_url)
        wcs = server.fields[0].wcs()
        # field A is 240 x 160 pixels; its corner still resolves to it (a galaxy is 27" away)
        edge = [float(v) for v in wcs.pixel_to_world_values(5, 80)]
        corner = [float(v) for v in wcs.pixel_to_world_values(0, 0)]
        reqs = [CutoutRequest(0, *edge, "edge"), CutoutRequest(1, *corner, "corner")]
        with _service(FRAMES, options) as svc:
            results = _fetch(svc, reqs)
            summary = svc.summary()
    image = results[0].image
    assert results[0].status == "ok"
    # frame x runs along dec here: 15 - 5 = 10 output rows lie south of the frame edge
    assert not image[:, :10, :].any() and image[:, 10:, :].all()
    assert results[1].status == "no-coverage"  # three quarters of it off the frame
    assert "1 stamps zero-filled past a frame edge" in summary


def test_corrupt_disk_cache_is_set_aside_and_rebuilt(fake_sdss, options, tmp_path):
    with _service(FRAMES, options) as svc:
        good = _fetch(svc, _requests(fake_sdss, [0]))[0].image
    cached = next((tmp_path / "frames").rglob("frame-r-001000-1-0100.fits.bz2"))
    cached.write_bytes(cached.read_bytes()[:1000])
    with _service(FRAMES, options) as svc:
        again = _fetch(svc, _requests(fake_sdss, [0]))[0]
        assert "1 corrupt cache files set aside" in svc.summary()
    np.testing.assert_array_equal(again.image, good)
    assert cached.with_suffix(".bz2.corrupt").exists()
    assert fake_sdss.count("frame-r-") == 2


JPEG = {"bands": ["R", "G", "B"], "image_size": 48, "pixel_scale_arcsec": 0.4,
        "image_source": "jpeg"}


def test_jpeg_cutouts(fake_sdss, options):
    reqs = _requests(fake_sdss, [0, 4]) + [CutoutRequest(7, 10.0, -10.0, "far")]
    with _service(JPEG, options) as svc:
        rgb = _fetch(svc, reqs)
    with _service({**JPEG, "bands": ["b", "g", "r"], "jpeg_scale": 1 / 255}, options) as svc:
        bgr = _fetch(svc, reqs)
    # filter labels, as the DeepMerge II SDSS set records them, keep the JPEG's R,G,B order
    with _service({**JPEG, "bands": ["g", "r", "i"]}, options) as svc:
        gri = _fetch(svc, reqs)
    assert rgb[7].status == bgr[7].status == gri[7].status == "no-coverage"
    for row in (0, 4):
        image = rgb[row].image
        assert rgb[row].status == "ok" and image.shape == (3, 48, 48) and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 255
        assert abs(_peak(image[0])[0] - 23.5) <= 1 and abs(_peak(image[0])[1] - 23.5) <= 1
        # channel names are followed, here reversed and scaled to 0..1
        np.testing.assert_allclose(bgr[row].image, image[::-1] / 255, rtol=1e-6)
        np.testing.assert_array_equal(gri[row].image, image)
        # R,G,B = i,r,g and the i band is brightest in these galaxies: R carries the most light
        assert image[0].sum() > image[2].sum()
    assert fake_sdss.count("getjpeg") == 6


def test_jpeg_truncated_then_ok(fake_sdss, options):
    fake_sdss.add_fault("getjpeg", "truncate")
    with _service(JPEG, options) as svc:
        results = _fetch(svc, _requests(fake_sdss, [0]))
    assert results[0].status == "ok"
    assert fake_sdss.count("getjpeg") == 2


@pytest.mark.parametrize(
    ("preprocess", "words"),
    [
        ({**FRAMES, "bands": ["g", "r", "y"]}, "cannot produce bands g,r,y"),
        ({**FRAMES, "bands": []}, "cannot produce bands (none)"),
        ({**JPEG, "bands": ["R", "G", "B", "NIR"]}, "3 channels"),
        ({**JPEG, "bands": ["g", "r"]}, "3 channels"),
        ({**FRAMES, "image_source": "spectra"}, "image_source 'spectra'"),
        ({**FRAMES, "image_size": 0}, "image_size"),
        ({**FRAMES, "bands": ["r"], "image_size": 8}, "option 'workers' of sdss must be int"),
    ],
)
def test_models_sdss_cannot_feed_are_refused_in_one_line(preprocess, words, options):
    if preprocess["image_size"] == 8:  # a good model with a bad option
        options = {**options, "workers": "many"}
    with pytest.raises(GalmergeError) as info:
        _service(preprocess, options)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_cache_key_names_what_the_stamps_are(fake_sdss, options):
    with make_cutout_service(FRAMES, options) as a, make_cutout_service(JPEG, options) as b:
        assert a.cache_key != b.cache_key
        assert "g,r,i" in a.cache_key and "31px" in a.cache_key and "jpeg" in b.cache_key


# -- the frame disk cache is bounded: least recently used frame files go first -------------------

FIELD_A, FIELD_B, FIELD_C = "001000-1-0100", "001000-1-0101", "002000-3-0050"


def _frame_files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in root.rglob("frame-*.fits.bz2")}


def _field_sizes(fake: FakeSdss, options: dict) -> dict[str, int]:
    """Bytes of each field's three frame files, from an unbounded first run."""
    root = Path(options["frame_cache_dir"])
    with _service(FRAMES, {**options, "frame_cache_gb": "inf"}) as svc:
        _fetch(svc, _requests(fake, [0, 3, 4]))
    files = _frame_files(root)
    for p in root.rglob("frame-*"):
        p.unlink()
    return {f: sum(v for k, v in files.items() if f in k) for f in (FIELD_A, FIELD_B, FIELD_C)}


def test_frame_disk_cache_keeps_its_bound_evicting_least_recently_used(fake_sdss, options):
    sizes = _field_sizes(fake_sdss, options)
    # two fields fit, three do not, and eviction (down to 90 % of the bound) stops at two
    limit = (sizes[FIELD_A] + sizes[FIELD_C]) / FrameDiskCache.LOW_WATER + 100
    assert sizes[FIELD_A] + sizes[FIELD_B] <= limit < sum(sizes.values())
    opts = {**options, "frame_cache_gb": limit / 1e9, "memory_frames": 0}
    root = Path(options["frame_cache_dir"])
    with _service(FRAMES, opts) as svc:
        for i in (0, 3, 0):  # field A, field B, then A again: B is now least recently used
            assert _fetch(svc, _requests(fake_sdss, [i]))[i].status == "ok"
            time.sleep(0.05)  # distinct mtimes on coarse filesystem clocks
        downloads = fake_sdss.count("frame-")
        assert _fetch(svc, _requests(fake_sdss, [4]))[4].status == "ok"  # field C
        summary = svc.summary()
    files = _frame_files(root)
    assert sum(files.values()) <= limit
    assert all(any(f"-{FIELD_A}." in k and k.startswith(f"frame-{b}") for k in files)
               for b in "gri")  # recently used: kept
    assert all(any(FIELD_C in k and k.startswith(f"frame-{b}") for k in files) for b in "gri")
    evicted = [b for b in "gri" if f"frame-{b}-{FIELD_B}.fits.bz2" not in files]
    assert evicted[:1] == ["g"]  # least recently used first: B, in the order it was written
    assert f"{len(evicted)} least recently used evicted" in summary
    assert fake_sdss.count("frame-") == downloads + 3
    with _service(FRAMES, opts) as svc:  # a new run: A from disk, B downloaded again
        _fetch(svc, _requests(fake_sdss, [0, 3]))
    assert fake_sdss.count(f"frame-g-{FIELD_A}") == 2  # the sizing run and the first run
    assert fake_sdss.count(f"frame-g-{FIELD_B}") == 3


def test_frame_cache_eviction_never_touches_files_it_did_not_write(fake_sdss, options):
    """frame_cache_dir may name a folder that holds the user's own files: they are neither
    counted towards the bound nor evicted, however old and large."""
    sizes = _field_sizes(fake_sdss, options)
    limit = (sizes[FIELD_A] + sizes[FIELD_C]) / FrameDiskCache.LOW_WATER + 100
    root = Path(options["frame_cache_dir"])
    mine = {root / "thesis.tex": b"x" * int(limit), root / "sub" / "notes.txt": b"y" * 10,
            root / "frame-r-000001-1-0001.fits": b"z"}  # not a name the cache writes
    for path, blob in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        os.utime(path, (1, 1))  # the least recently used files of all
    opts = {**options, "frame_cache_gb": limit / 1e9, "memory_frames": 0}
    with _service(FRAMES, opts) as svc:
        for i in (0, 3, 4):
            assert _fetch(svc, _requests(fake_sdss, [i]))[i].status == "ok"
        summary = svc.summary()
    assert all(path.read_bytes() == blob for path, blob in mine.items())
    assert sum(_frame_files(root).values()) <= limit  # the bound holds for the frames
    assert "least recently used evicted" in summary


def test_a_frame_being_read_by_another_process_is_never_evicted(fake_sdss, options):
    import subprocess
    import sys

    sizes = _field_sizes(fake_sdss, options)
    limit = sizes[FIELD_A] + sizes[FIELD_B] + 100
    opts = {**options, "frame_cache_gb": limit / 1e9, "memory_frames": 0}
    root = Path(options["frame_cache_dir"])
    with _service(FRAMES, opts) as svc:
        _fetch(svc, _requests(fake_sdss, [0]))
        time.sleep(0.05)
        _fetch(svc, _requests(fake_sdss, [3]))
    oldest = min(root.rglob("frame-*.fits.bz2"), key=lambda p: p.stat().st_mtime_ns)
    assert FIELD_A in oldest.name
    # another process holds the least recently used frame open for reading, as a reader does
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from galmerge.surveys.sdss.cutouts import "
         "FrameDiskCache as C\nwith C(Path(sys.argv[1]), 0).reading(Path(sys.argv[2])):\n"
         "    print('reading', flush=True); sys.stdin.read()",
         str(root), str(oldest)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "reading"
        with _service(FRAMES, opts) as svc:
            assert _fetch(svc, _requests(fake_sdss, [4]))[4].status == "ok"  # field C
            assert svc.frames.disk.kept_in_use >= 1
        assert oldest.exists()  # skipped while read; newer frames went instead
        assert sum(_frame_files(root).values()) <= limit + oldest.stat().st_size
    finally:
        reader.communicate("")
    assert not any(f"frame-g-{FIELD_B}" in k for k in _frame_files(root))
    with _service(FRAMES, opts) as svc:  # released: the next write evicts it
        _fetch(svc, _requests(fake_sdss, [3]))  # field B again: downloaded, written
    assert not oldest.exists()
    assert sum(_frame_files(root).values()) <= limit


@pytest.mark.parametrize("value", ["-1", "lots", "nan"])
def test_bad_frame_cache_size_is_a_one_line_error(monkeypatch, options, value):
    monkeypatch.setenv("GALMERGE_SDSS_FRAME_CACHE_GB", value)
    with pytest.raises(GalmergeError, match="GALMERGE_SDSS_FRAME_CACHE_GB must be a size in GB"):
        _service(FRAMES, options)
    with pytest.raises(GalmergeError, match="option frame_cache_gb must be a size"):
        _service(FRAMES, {**options, "frame_cache_gb": value})


def test_a_survey_spec_cannot_set_the_wait_between_tries(tmp_path):
    """`--survey "sdss?sleep=1"` once reached the retry loop and called 1 (a traceback naming
    the plugin); the wait is no option, so the spec is an unknown-option error up front."""
    _, _, given = parse_survey_spec("sdss?sleep=1")
    with pytest.raises(GalmergeError, match="sdss: unknown option 'sleep'") as err:
        _service(FRAMES, {"frame_cache_dir": str(tmp_path), **given})
    assert "\n" not in str(err.value)


def test_frame_cache_size_from_the_environment(monkeypatch, fake_sdss, options):
    monkeypatch.setenv("GALMERGE_SDSS_FRAME_CACHE_GB", "0")  # keep nothing once read
    with _service(FRAMES, options) as svc:
        assert _fetch(svc, _requests(fake_sdss, [0]))[0].status == "ok"
    assert _frame_files(Path(options["frame_cache_dir"])) == {}


STRESS = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_sdss_cutouts import FRAMES, _requests, _service
from fake_sdss import default_sky
import fake_sdss
class Fake:  # the galaxies of the server the parent process started
    galaxies = default_sky()[1]
opts = {{"frame_cache_dir": sys.argv[1], "frame_cache_gb": float(sys.argv[2]),
        "memory_frames": 0, "workers": 3, "backoff": 0.001, "attempts": 3}}
statuses = []
for _ in range(4):
    with _service(FRAMES, opts) as svc:
        statuses += [r.status for r in svc.fetch(_requests(Fake))]
        corrupt = svc.frames.corrupt_cache_files
        assert corrupt == 0, svc.summary()
print(" ".join(sorted(set(statuses))), len(statuses))
"""


def test_shared_bounded_frame_cache_under_threads_and_processes(fake_sdss, options, tmp_path):
    """Two processes with three download threads each share one frame folder whose bound
    holds about one field: frames are evicted while others read them, and every stamp is ok."""
    import os
    import subprocess
    import sys

    sizes = _field_sizes(fake_sdss, options)
    script = tmp_path / "stress.py"
    script.write_text(STRESS.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), options["frame_cache_dir"],
                               str(sizes[FIELD_A] * 1.2 / 1e9)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == ["ok", str(4 * len(fake_sdss.galaxies))]
    assert sum(_frame_files(Path(options["frame_cache_dir"])).values()) <= sizes[FIELD_A] * 1.2
    assert not list(Path(options["frame_cache_dir"]).rglob("*.corrupt"))


def test_a_bz2_frame_that_inflates_past_any_real_frame_is_corrupt_and_bounded(monkeypatch):
    import bz2
    import tracemalloc

    from galmerge.io.http import CorruptResponse
    from galmerge.surveys.sdss import cutouts
    from galmerge.surveys.sdss.cutouts import decode_frame

    assert getattr(cutouts, "FRAME_MAX_BYTES", 0) >= 32 << 20  # well above a real ~12 MB frame
    monkeypatch.setattr(cutouts, "FRAME_MAX_BYTES", 1 << 20, raising=False)
    import astropy.io.fits  # noqa: F401 -- imported before memory is counted
    import astropy.wcs  # noqa: F401

    bomb = bz2.compress(b"\0" * (100 << 20))  # 100 MiB of zeros in a few hundred bytes
    tracemalloc.start()
    try:
        with pytest.raises(CorruptResponse, match=r"corrupt frame \(bz2 over 1 MiB unpacked\)"):
            decode_frame(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # never the whole 100 MiB
    with pytest.raises(CorruptResponse, match="cut short"):
        decode_frame(bz2.compress(b"SIMPLE  = T" + b" " * 5749)[:-20])


def test_a_position_lookup_dripping_in_is_cut_off_at_the_deadline(fake_sdss, options):
    import threading

    fake_sdss.add_fault("x_results.aspx", "drip", times=-1, delay=0.2)
    out: list = []
    opts = {**options, "attempts": 1, "timeout": 2.0, "deadline": 1.0}

    def run():
        with _service(FRAMES, opts) as svc:
            out.append(_fetch(svc, _requests(fake_sdss, [0])))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)  # the 1 s deadline and a little, not the whole drip
    assert out, "the lookup was still running 10 s after a 1 s deadline"
    assert out[0][0].status == "fetch-failed: timeout (body not complete after 1 s)"


@pytest.mark.parametrize("release", [8, 10, 12, 16, 17])
def test_the_position_lookup_url_is_astroquerys_for_every_release(release):
    # galmerge builds it from astroquery's public suffix constants; its private
    # _get_query_url (used before) picks among them by release the same way
    from astroquery.sdss import SDSS, conf

    from galmerge.surveys.sdss.cutouts import _query_suffix

    if not hasattr(SDSS, "_get_query_url"):
        pytest.skip("this astroquery has no _get_query_url to compare with")
    expected = SDSS._get_query_url(release).removeprefix(conf.skyserver_baseurl)
    assert _query_suffix(SDSS, release) == expected


def test_a_frame_in_several_bz2_streams_is_read_whole_and_still_bounded(monkeypatch):
    # pbzip2/lbzip2 write concatenated streams; bz2.decompress read them all, the bounded
    # reader once stopped after the first (a cut FITS file, then fetch-failed)
    import bz2

    from galmerge.io.http import CorruptResponse
    from galmerge.surveys.sdss import cutouts

    body = bytes(range(256)) * 200
    two = bz2.compress(body[:20000]) + bz2.compress(body[20000:])
    assert cutouts._bunzip_frame(two) == body == bz2.decompress(two)
    monkeypatch.setattr(cutouts, "FRAME_MAX_BYTES", 30000)
    with pytest.raises(CorruptResponse, match="over 0 MiB unpacked"):  # each under, not both
        cutouts._bunzip_frame(bz2.compress(body[:25000]) + bz2.compress(body[:25000]))


@pytest.mark.parametrize("failure", ["blocked", "full"])
def test_a_frame_cache_that_cannot_be_written_still_gives_every_stamp(
        fake_sdss, options, tmp_path, monkeypatch, capsys, failure):
    # the disk cache is optional: a frame decoded in memory gives its stamps even when it cannot
    # be stored (it failed every row of the field), with one warning naming the folder and fix
    import errno

    root = tmp_path / "frames"
    if failure == "blocked":  # a real one: a file where the cache needs a folder
        root.mkdir()
        (root / "dr17").write_text("mine")
    else:  # a full disk
        def full(path, blob, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(sdss_cutouts.atomic, "write_bytes", full)
    with _service(FRAMES, {**options, "frame_cache_dir": str(root)}) as svc:
        results = _fetch(svc, _requests(fake_sdss))
        assert all(r.status == "ok" for r in results.values()), results
        assert svc.frames.downloads >= 3 and svc.frames.cache_write_failures >= 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"frame cache {root} " in err[0] and "memory only" in err[0]
    fix = "GALMERGE_SDSS_FRAME_CACHE_GB" if failure == "full" else "frame_cache_dir"
    assert fix in err[0]
    if failure == "blocked":
        assert (root / "dr17").read_text() == "mine"  # the user's file is left as it was


def test_a_frame_cache_dir_through_a_file_is_one_line_before_any_request(
        fake_sdss, tmp_path, monkeypatch):
    from test_classify import _sdss_checkpoint, run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GALMERGE_DATA", str(tmp_path / "data"))
    (tmp_path / "afile").write_text("x")
    cat = tmp_path / "c.csv"
    cat.write_text("objID,ra,dec\n" + "".join(f"{i},{g.ra},{g.dec}\n"
                                               for i, g in enumerate(fake_sdss.galaxies)))
    res = run_cli("classify", str(cat), "--model", str(_sdss_checkpoint(tmp_path / "best.pt")),
                  "--quiet", "--survey", f"sdss?frame_cache_dir={tmp_path}/afile/frames",
                  "--cache", str(tmp_path / "c.h5"), "--output", str(tmp_path / "o.csv"))
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert f"frame_cache_dir {tmp_path}/afile/frames is under {tmp_path}/afile" in lines[0]
    assert "not a folder" in lines[0]
    assert fake_sdss.count() == 0 and not (tmp_path / "o.csv").exists()
