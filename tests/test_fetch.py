"""`galmerge fetch` against a real loopback HTTP server speaking the Zenodo API and Range."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from loopback_http import LoopbackServer

from galmerge.cli import cli
from galmerge.data.datasets import load_imageset
from galmerge.surveys.deepmerge import data as deepmerge_data

RECORD = deepmerge_data.ZENODO_RECORD
SIZES = {"SimReal_SOURCE": 6, "SimSim_SOURCE": 5, "SimSim_TARGET": 5, "SimReal_TARGET": 4}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _zenodo_blobs() -> dict[str, bytes]:
    """The eight DeepMerge II files in their real format, made small."""
    rng = np.random.default_rng(7)
    blobs = {}
    for group in ("illustris", "sdss"):
        _, names = deepmerge_data.FETCH_GROUPS[group]
        for x_name, y_name in zip(names[::2], names[1::2], strict=True):
            n = SIZES[x_name.split("_X_")[0]]
            x = rng.normal(size=(n, 3, 75, 75)).astype(np.float32)
            if group == "sdss":  # 0..255 colour values, as the JPEG-derived SDSS set
                x = np.round(rng.uniform(0, 255, size=(n, 3, 75, 75))).astype(np.float32)
            blobs[x_name] = _npy(x)
            blobs[y_name] = _npy((np.arange(n) % 2).astype(np.float64))
    return blobs


def _fits_blob(n: int) -> bytes:
    rng = np.random.default_rng(3)
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(rng.normal(size=(n, 3, 75, 75)).astype(">f4")),
            fits.ImageHDU((np.arange(n) % 2).astype(">i2")),
        ]
    )
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


@pytest.fixture
def server(monkeypatch, tmp_path):
    blobs = _zenodo_blobs()
    with LoopbackServer() as srv:
        srv.add_zenodo_record(RECORD, blobs)
        srv.zenodo = blobs
        for name in deepmerge_data.FETCH_GROUPS["deepmerge1"][1]:
            srv.add(f"/{deepmerge_data.MAST_HLSP_PATH}/{name}", _fits_blob(4))
        monkeypatch.setenv("GALMERGE_ZENODO_URL", srv.url)
        monkeypatch.setenv("GALMERGE_MAST_URL", srv.url)
        monkeypatch.setenv("GALMERGE_DATA", str(tmp_path))
        yield srv


def _fetch(*args: str, progress: bool = False):
    extra = [] if progress else ["--no-progress"]
    return CliRunner().invoke(cli, ["fetch", *args, *extra], catch_exceptions=False)


def _folder(tmp_path):
    return tmp_path / "deepmerge"


def test_fetch_all_then_surveys_read_the_files(server, tmp_path):
    result = _fetch("all", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    for name, blob in server.zenodo.items():
        got = (_folder(tmp_path) / name).read_bytes()
        assert hashlib.md5(got).hexdigest() == hashlib.md5(blob).hexdigest()
    assert not list(_folder(tmp_path).glob("*.part"))
    assert result.output.count("downloaded") == 8
    sim_real = load_imageset("illustris")
    assert (len(sim_real), sim_real.bands) == (6, ("g", "r", "i"))
    assert sim_real.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert len(load_imageset("illustris:pristine")) == 5
    assert load_imageset("illustris:noisy").bands == ("F814W", "F160W", "F356W")
    sdss = load_imageset("sdss")
    assert (len(sdss), sdss.image_source, sdss.stretch) == (4, "jpeg", "none")
    x = np.load(io.BytesIO(server.zenodo["SimReal_TARGET_X_postmergers_SDSS.npy"]))
    np.testing.assert_array_equal(sdss.images.numpy(), x)


def test_second_fetch_skips_complete_files(server, tmp_path):
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    server.log.clear()
    result = _fetch("sdss", "--data-dir", str(tmp_path))
    assert result.exit_code == 0
    assert result.output.count("already present") == 2
    assert [p for m, p, r in server.log if "/files/" in p] == []  # only the API document


def test_dropped_connection_is_resumed_with_range(server, tmp_path, sleeps):
    name = "SimReal_SOURCE_X_Illustris0.npy"
    server.faults[f"/api/records/{RECORD}/files/{name}/content"] = ["drop"]
    result = _fetch("illustris", "--data-dir", str(tmp_path), progress=True)
    assert result.exit_code == 0, result.output
    ranges = server.gets(f"/{name}/content")
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(server.zenodo[name]) // 2
    assert (_folder(tmp_path) / name).read_bytes() == server.zenodo[name]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    name = "SimReal_TARGET_y_postmergers_SDSS.npy"
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / f"{name}.part").write_bytes(server.zenodo[name][:50])
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    assert server.gets(f"/{name}/content") == ["bytes=50-"]
    assert (folder / name).read_bytes() == server.zenodo[name]


def test_server_ignoring_range_still_gives_the_right_file(server, tmp_path):
    name = "SimReal_TARGET_y_postmergers_SDSS.npy"
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / f"{name}.part").write_bytes(b"garbage!" * 3)
    server.faults[f"/api/records/{RECORD}/files/{name}/content"] = ["ignore-range"]
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    assert (folder / name).read_bytes() == server.zenodo[name]


def test_server_errors_are_retried(server, tmp_path, sleeps):
    name = "SimReal_TARGET_X_postmergers_SDSS.npy"
    server.faults[f"/api/records/{RECORD}/files/{name}/content"] = ["500", "500"]
    server.faults[f"/api/records/{RECORD}"] = ["500"]
    result = _fetch("sdss", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(server.gets(f"/{name}/content")) == 3
    assert len(sleeps) == 3  # backoff, not real sleeping: the record once, the file twice
    assert (_folder(tmp_path) / name).read_bytes() == server.zenodo[name]


def test_stalled_transfer_times_out_and_resumes(server, tmp_path, monkeypatch, sleeps):
    from galmerge.surveys.deepmerge import download

    original = download.Downloader.__init__

    def short_timeout(self, **kw):
        original(self, **{**kw, "timeout": (2.0, 0.5)})

    monkeypatch.setattr(download.Downloader, "__init__", short_timeout)
    name = "SimReal_TARGET_y_postmergers_SDSS.npy"
    server.faults[f"/api/records/{RECORD}/files/{name}/content"] = ["stall"]
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    assert len(server.gets(f"/{name}/content")) == 2
    assert (_folder(tmp_path) / name).read_bytes() == server.zenodo[name]


def test_corrupted_download_is_moved_aside_and_reported(server, tmp_path):
    name = "SimReal_TARGET_X_postmergers_SDSS.npy"
    server.faults[f"/api/records/{RECORD}/files/{name}/content"] = ["corrupt"]
    result = CliRunner().invoke(
        cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code != 0
    error = [line for line in result.output.splitlines() if "Error" in line]
    assert len(error) == 1 and "checksum mismatch" in error[0] and "--force" in error[0]
    folder = _folder(tmp_path)
    assert not (folder / name).exists()
    assert (folder / f"{name}.corrupt").exists()
    assert (folder / "SimReal_TARGET_y_postmergers_SDSS.npy").exists()  # the other file still came
    # the next run downloads it cleanly
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    assert (folder / name).read_bytes() == server.zenodo[name]


def test_tampered_local_file_is_replaced_and_force_downloads_again(server, tmp_path):
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    name = "SimReal_TARGET_y_postmergers_SDSS.npy"
    path = _folder(tmp_path) / name
    path.write_bytes(b"x" * len(server.zenodo[name]))  # same size, wrong bytes, new mtime
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    assert path.read_bytes() == server.zenodo[name]
    server.log.clear()
    assert _fetch("sdss", "--data-dir", str(tmp_path), "--force").exit_code == 0
    assert len(server.gets("/content")) == 2


def test_a_bad_forced_transfer_keeps_the_good_copy(server, tmp_path):
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    name = "SimReal_TARGET_X_postmergers_SDSS.npy"
    path = _folder(tmp_path) / name
    server.faults[f"/api/records/{RECORD}/files/{name}/content"] = ["corrupt"]
    result = CliRunner().invoke(
        cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress", "--force"]
    )
    assert result.exit_code != 0
    assert "checksum mismatch" in result.output and "copy already there is kept" in result.output
    assert path.read_bytes() == server.zenodo[name]  # the verified file survived
    assert (path.parent / f"{name}.corrupt").exists()
    server.log.clear()
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0  # still counts as present
    assert not server.gets("/content")


def test_deepmerge1_fits_from_mast(server, tmp_path):
    result = _fetch("deepmerge1", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "structure verified" in result.output
    s = load_imageset("illustris:deepmerge1-noisy")
    assert len(s) == 4 and s.labels.tolist() == [0, 1, 0, 1]
    assert s.bands == ("F814W", "F160W", "F356W")


def test_a_damaged_file_without_a_published_checksum_is_fetched_again(server, tmp_path):
    assert _fetch("deepmerge1", "--data-dir", str(tmp_path)).exit_code == 0
    path = next(_folder(tmp_path).parent.rglob("*.fits"))
    good = path.read_bytes()
    path.write_bytes(b"\0" * len(good))  # same size, not FITS any more: size alone passes it
    server.log.clear()
    result = _fetch("deepmerge1", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == good and len(server.gets(path.name)) == 1


def test_a_cut_file_without_a_published_size_or_checksum_is_fetched_again(server, tmp_path):
    """MAST may give neither a checksum nor a size: a copy cut short in its labels HDU still
    opens, so every HDU's data must be checked before the copy is taken as verified."""
    assert _fetch("deepmerge1", "--data-dir", str(tmp_path)).exit_code == 0
    path = next(_folder(tmp_path).parent.rglob("*.fits"))
    good = path.read_bytes()
    server.no_length.add(next(p for p in server.blobs if p.endswith(path.name)))
    path.write_bytes(good[:-100])  # the end of the labels HDU is missing
    server.log.clear()
    result = _fetch("deepmerge1", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "failed its check" in result.output
    assert path.read_bytes() == good and len(server.gets(path.name)) == 1


def test_a_part_of_a_file_that_changed_on_the_server_is_not_completed_with_the_new_tail(
    server, tmp_path, sleeps, monkeypatch
):
    """MAST publishes no checksum: a resume must ask If-Range, or an old head + a new tail of
    the same size would pass as the file."""
    from galmerge.surveys.deepmerge import download

    monkeypatch.setattr(download, "CHUNK", 1024)
    name = deepmerge_data.FETCH_GROUPS["deepmerge1"][1][0]
    path = f"/{deepmerge_data.MAST_HLSP_PATH}/{name}"
    server.faults[path] = ["drop"] + ["drop-empty"] * 3  # leaves half the file in NAME.part
    result = CliRunner().invoke(cli, ["fetch", "deepmerge1", "--data-dir", str(tmp_path),
                                      "--retries", "2", "--no-progress"])
    assert result.exit_code != 0
    old = server.blobs[path]
    new = bytearray(old)
    new[3000:3400] = bytes(400)  # replaced by a file of the same size, its head changed
    server.add(path, bytes(new))
    server.log.clear()
    assert _fetch("deepmerge1", "--data-dir", str(tmp_path)).exit_code == 0
    got = next(p for p in tmp_path.rglob(name) if p.is_file()).read_bytes()
    assert got == bytes(new)
    assert [r for r in server.gets(name)][0] is not None  # it did try to resume


def test_a_redirect_is_followed_within_the_server_and_refused_to_another(server, tmp_path):
    names = deepmerge_data.FETCH_GROUPS["deepmerge1"][1]
    with LoopbackServer() as elsewhere:
        for name in names:
            path = f"/{deepmerge_data.MAST_HLSP_PATH}/{name}"
            elsewhere.add(path, _fits_blob(4))
            server.add(f"/moved/{name}", server.blobs[path])
            server.redirects[path] = f"{elsewhere.url}{path}"
        result = CliRunner().invoke(cli, ["fetch", "deepmerge1", "--data-dir", str(tmp_path),
                                          "--no-progress"])
        assert result.exit_code != 0
        text = "".join(result.output.splitlines())  # the console wraps long lines
        assert text.count(f"redirected to {elsewhere.url}/{deepmerge_data.MAST_HLSP_PATH}/") == 2
        assert "another host" in text and "GALMERGE_MAST_URL" in text
        assert elsewhere.log == []  # never contacted
    for name in names:  # within the same server, a file that moved is followed
        server.redirects[f"/{deepmerge_data.MAST_HLSP_PATH}/{name}"] = f"/moved/{name}"
    result = _fetch("deepmerge1", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.output.count("downloaded") == len(names)


def test_unreachable_server_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("GALMERGE_ZENODO_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(
        cli, ["fetch", "illustris", "--data-dir", str(tmp_path), "--retries", "0", "--no-progress"]
    )
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "GALMERGE_ZENODO_URL" in lines[0]


def test_record_without_a_file_is_reported(server, tmp_path):
    del server.zenodo["SimReal_TARGET_y_postmergers_SDSS.npy"]
    server.add_zenodo_record(RECORD, server.zenodo)
    result = CliRunner().invoke(
        cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code != 0
    assert "has no file SimReal_TARGET_y_postmergers_SDSS.npy" in result.output


def test_a_second_fetch_of_the_same_file_waits_its_turn(server, tmp_path):
    import fcntl

    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    name = "SimReal_TARGET_X_postmergers_SDSS.npy"
    with open(folder / f".{name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = CliRunner().invoke(
            cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress"]
        )
    assert result.exit_code != 0
    assert "another galmerge fetch is downloading it" in result.output
    assert not (folder / name).exists()


# -- retry policy: Retry-After, statuses not worth a retry, progress resets the tries ------------


@pytest.fixture
def sleeps(monkeypatch):
    """Every Downloader the CLI builds records its waits here instead of sleeping."""
    from galmerge.surveys.deepmerge import download

    waits: list[float] = []
    original = download.Downloader.__init__

    def recording(self, **kw):
        original(self, **{**kw, "sleep": waits.append})

    monkeypatch.setattr(download.Downloader, "__init__", recording)
    return waits


X_SDSS = "SimReal_TARGET_X_postmergers_SDSS.npy"


def _content(name: str) -> str:
    return f"/api/records/{RECORD}/files/{name}/content"


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Error" in line]


def test_429_waits_as_long_as_retry_after_says(server, tmp_path, sleeps):
    server.faults[_content(X_SDSS)] = ["429:7"]
    server.faults[f"/api/records/{RECORD}"] = ["503-retry-after:2"]
    result = _fetch("sdss", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sleeps == [2.0, 7.0]  # the record document's 503, then the file's 429
    assert len(server.gets(f"/{X_SDSS}/content")) == 2
    assert (_folder(tmp_path) / X_SDSS).read_bytes() == server.zenodo[X_SDSS]
    assert "waiting" not in result.output  # short waits pass quietly


def test_long_retry_after_is_announced_and_capped(server, tmp_path, sleeps):
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    when = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    server.faults[_content(X_SDSS)] = ["429:86400", f"503-retry-after:{when}"]
    result = _fetch("sdss", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert sleeps[0] == 300.0  # a day's Retry-After is capped at five minutes
    assert 55.0 < sleeps[1] <= 60.0  # an HTTP-date counts from now
    assert len(sleeps) == 2
    said = " ".join(result.output.split())  # the console wraps long lines
    assert f"{X_SDSS}: HTTP 429; waiting 300 s before trying again" in said
    assert f"{X_SDSS}: HTTP 503; waiting" in said
    assert (_folder(tmp_path) / X_SDSS).read_bytes() == server.zenodo[X_SDSS]


@pytest.mark.parametrize("status", ["501", "505"])
def test_status_not_worth_a_retry_fails_at_once_in_one_line(server, tmp_path, sleeps, status):
    server.faults[_content(X_SDSS)] = [status]
    result = CliRunner().invoke(
        cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code != 0
    assert len(server.gets(f"/{X_SDSS}/content")) == 1  # no retry
    assert sleeps == []
    error = _error_lines(result.output)
    assert len(error) == 1 and f"{X_SDSS}: HTTP {status}" in error[0]
    assert "Traceback" not in result.output
    folder = _folder(tmp_path)
    assert not (folder / X_SDSS).exists()
    assert (folder / "SimReal_TARGET_y_postmergers_SDSS.npy").exists()  # the other file came


def test_drops_that_get_further_do_not_use_up_the_retries(server, tmp_path, sleeps, monkeypatch):
    from galmerge.surveys.deepmerge import download

    monkeypatch.setattr(download, "CHUNK", 1024)  # a drop loses at most 1 KiB of what came
    server.faults[_content(X_SDSS)] = ["drop"] * 6  # each try sends half of what is left
    result = _fetch("sdss", "--data-dir", str(tmp_path), "--retries", "2")
    assert result.exit_code == 0, result.output
    ranges = server.gets(f"/{X_SDSS}/content")
    assert len(ranges) == 7  # six drops, far more than 2 retries, then the rest
    offsets = [0] + [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert offsets == sorted(set(offsets))  # every resume started further on
    assert len(sleeps) == 6
    assert (_folder(tmp_path) / X_SDSS).read_bytes() == server.zenodo[X_SDSS]


def test_drops_without_progress_use_up_the_retries_and_keep_the_part(
    server, tmp_path, sleeps, monkeypatch
):
    from galmerge.surveys.deepmerge import download

    monkeypatch.setattr(download, "CHUNK", 1024)
    # one drop that gets somewhere (tries start afresh), then three that get nowhere
    server.faults[_content(X_SDSS)] = ["drop"] + ["drop-empty"] * 3
    result = CliRunner().invoke(
        cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--retries", "2", "--no-progress"]
    )
    assert result.exit_code != 0
    ranges = server.gets(f"/{X_SDSS}/content")
    assert len(ranges) == 4 and ranges[0] is None
    assert len(set(ranges[1:])) == 1  # the three empty tries all asked for the same range
    error = _error_lines(result.output)
    assert len(error) == 1
    assert f"{X_SDSS}: download failed after 2 retries (connection dropped" in error[0]
    assert "run the same fetch again to resume" in error[0]
    folder = _folder(tmp_path)
    part = folder / f"{X_SDSS}.part"
    kept = part.stat().st_size
    assert kept == int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0
    assert part.read_bytes() == server.zenodo[X_SDSS][:kept]
    assert not (folder / X_SDSS).exists()
    # the next run resumes from the kept part and completes the file
    server.log.clear()
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    assert server.gets(f"/{X_SDSS}/content") == [f"bytes={kept}-"]
    assert (folder / X_SDSS).read_bytes() == server.zenodo[X_SDSS]
    assert not part.exists()


def test_bytes_from_an_earlier_run_are_not_progress_of_this_one(server, tmp_path, sleeps):
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / f"{X_SDSS}.part").write_bytes(server.zenodo[X_SDSS][:5000])
    server.faults[_content(X_SDSS)] = ["drop-empty"] * 3
    result = CliRunner().invoke(
        cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--retries", "1", "--no-progress"]
    )
    assert result.exit_code != 0
    assert server.gets(f"/{X_SDSS}/content") == ["bytes=5000-"] * 2  # one try, one retry
    assert (folder / f"{X_SDSS}.part").stat().st_size == 5000


# -- a server dripping bytes cannot hold a fetch: deadlines and a minimum rate ------------------


def _read_timeout(monkeypatch, seconds: float) -> None:
    """Every Downloader reads with this timeout (its transfer deadline is 4 times it)."""
    from galmerge.surveys.deepmerge import download

    original = download.Downloader.__init__

    def short(self, **kw):
        original(self, **{**kw, "timeout": (2.0, seconds), "sleep": lambda s: None})

    monkeypatch.setattr(download.Downloader, "__init__", short)


def _fetch_within(seconds: float, *args: str):
    """`galmerge fetch ARGS` in a thread; None if it is still running after ``seconds``."""
    import threading

    out = []
    thread = threading.Thread(
        target=lambda: out.append(CliRunner().invoke(cli, ["fetch", *args, "--no-progress"])),
        daemon=True)
    thread.start()
    thread.join(seconds)
    return out[0] if out else None


def test_a_record_document_dripping_in_is_cut_off_at_the_deadline(server, tmp_path, monkeypatch):
    _read_timeout(monkeypatch, 0.5)  # deadline 2 s; each byte comes in 0.2 s
    server.faults[f"/api/records/{RECORD}"] = ["trickle"]
    result = _fetch_within(10, "sdss", "--data-dir", str(tmp_path), "--retries", "0")
    assert result is not None, "fetch still running 10 s after a 2 s deadline"
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert f"Zenodo record {RECORD}" in lines[0] and "body not complete after 2 s" in lines[0]


@pytest.mark.parametrize("where", ["record", "file"])
def test_headers_dripping_in_are_cut_off_at_the_deadline(server, tmp_path, monkeypatch, where):
    # every header byte comes within the read timeout, the headers never end: the transfer
    # deadline (4 x 0.5 s) covers the wait for them, as it does for survey cutouts
    _read_timeout(monkeypatch, 0.5)
    path = f"/api/records/{RECORD}" if where == "record" else _content(X_SDSS)
    server.faults[path] = ["header-drip"]
    started = time.monotonic()
    result = _fetch_within(15, "sdss", "--data-dir", str(tmp_path), "--retries", "0")
    assert result is not None, "fetch still waiting for headers long after a 2 s deadline"
    assert time.monotonic() - started < 12
    assert result.exit_code != 0 and "Traceback" not in result.output
    error = _error_lines(result.output)
    assert len(error) == 1 and "headers not complete after 2 s" in error[0]
    assert (f"Zenodo record {RECORD}" if where == "record" else X_SDSS) in error[0]
    # nothing of the cut answer is left behind (no .part, no file)
    folder = _folder(tmp_path)
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert not [n for n in left if n.endswith((".part", ".corrupt")) or n == X_SDSS]


@pytest.mark.parametrize("where", ["zenodo", "mast"])
def test_a_password_in_the_server_url_is_never_shown(server, tmp_path, monkeypatch, where):
    from galmerge.errors import GalmergeError
    from galmerge.surveys.deepmerge.download import fetch

    monkeypatch.setenv(f"GALMERGE_{where.upper()}_URL",
                       server.url.replace("://", "://al:s3cretPW@"))
    if where == "zenodo":  # the record document
        server.faults[f"/api/records/{RECORD}"] = ["404"]
    else:  # a MAST file, whose address is made from the variable
        name = deepmerge_data.FETCH_GROUPS["deepmerge1"][1][0]
        server.faults[f"/{deepmerge_data.MAST_HLSP_PATH}/{name}"] = ["404"]
    with pytest.raises(GalmergeError) as failed:  # the Python API's message too
        fetch("sdss" if where == "zenodo" else "deepmerge1", data_dir=tmp_path)
    assert "HTTP 404 from http://***@127.0.0.1" in str(failed.value)
    assert "s3cretPW" not in str(failed.value)


def test_a_file_dripping_in_fails_the_try_at_the_minimum_rate(server, tmp_path, monkeypatch):
    from galmerge.surveys.deepmerge import download

    _read_timeout(monkeypatch, 2.0)  # every byte comes well within the read timeout
    monkeypatch.setattr(download, "MIN_RATE_BYTES", 1024, raising=False)
    monkeypatch.setattr(download, "MIN_RATE_WINDOW_S", 1.0, raising=False)
    server.faults[_content(X_SDSS)] = ["trickle"] * 2
    result = _fetch_within(15, "sdss", "--data-dir", str(tmp_path), "--retries", "1")
    assert result is not None, "fetch still running long after the rate rule should fire"
    assert result.exit_code != 0
    error = _error_lines(result.output)
    assert len(error) == 1 and "Traceback" not in result.output
    assert f"{X_SDSS}: download failed after 1 retries (transfer stalled (less than 1024 " \
           "bytes in 1 s))" in " ".join(result.output.split())
    assert len(server.gets(f"/{X_SDSS}/content")) == 2  # a drip is no progress: tries run out
    part = _folder(tmp_path) / f"{X_SDSS}.part"
    assert part.read_bytes() == server.zenodo[X_SDSS][: part.stat().st_size]  # kept, resumable


def test_a_body_longer_than_the_declared_size_is_stopped_and_set_aside(server, tmp_path):
    size = len(server.zenodo[X_SDSS])  # what the record declares
    server.faults[_content(X_SDSS)] = ["endless"]
    result = _fetch_within(15, "sdss", "--data-dir", str(tmp_path))
    assert result is not None, "fetch still writing far past the declared size"
    assert result.exit_code != 0 and "Traceback" not in result.output
    error = _error_lines(result.output)
    assert len(error) == 1
    assert f"{X_SDSS}: the server sent more than the {size} bytes" in " ".join(
        result.output.split())
    folder = _folder(tmp_path)
    assert not (folder / f"{X_SDSS}.part").exists() and not (folder / X_SDSS).exists()
    assert (folder / f"{X_SDSS}.corrupt").stat().st_size <= size  # nothing past the size written
    assert len(server.gets(f"/{X_SDSS}/content")) == 1  # the same answer is not asked again
    assert (folder / "SimReal_TARGET_y_postmergers_SDSS.npy").exists()  # the other file came


@pytest.mark.parametrize("files", [
    [{"key": X_SDSS, "size": "12 MB"}],
    [X_SDSS],
    [{"key": X_SDSS, "links": ["http://127.0.0.1:9/x"]}],
    {"entries": ["a"]},
    [{"key": 5}],
    [{"key": X_SDSS, "links": {"self": 7}}],
])
def test_a_malformed_zenodo_file_list_is_one_line_naming_the_record(server, tmp_path, files):
    import json

    server.add(f"/api/records/{RECORD}", json.dumps({"files": files}).encode(),
               "application/json")
    result = CliRunner().invoke(
        cli, ["fetch", "sdss", "--data-dir", str(tmp_path), "--no-progress"]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # no ValueError etc.
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert f"Zenodo record {RECORD}" in lines[0]


def test_a_file_entry_with_empty_links_is_fetched_from_zenodos_own_address(server, tmp_path):
    # links of empty strings once left the link "" instead of the record's file address
    import json

    doc = json.loads(server.blobs[f"/api/records/{RECORD}"])
    for entry in doc["files"]:
        entry["links"] = {"self": "", "content": "", "download": ""}
        server.add(f"/records/{RECORD}/files/{entry['key']}", server.zenodo[entry["key"]])
    server.add(f"/api/records/{RECORD}", json.dumps(doc).encode(), "application/json")
    result = _fetch("sdss", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (_folder(tmp_path) / X_SDSS).read_bytes() == server.zenodo[X_SDSS]
