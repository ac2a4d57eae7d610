"""`galmerge fetch` against a real loopback HTTP server speaking the Zenodo API and Range."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from loopback_http import LoopbackServer

from galmerge import deepmerge_data
from galmerge.cli import cli
from galmerge.datasets import load_imageset

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
    assert (len(sdss), sdss.meta["image_source"], sdss.meta["stretch"]) == (4, "jpeg", "none")
    x = np.load(io.BytesIO(server.zenodo["SimReal_TARGET_X_postmergers_SDSS.npy"]))
    np.testing.assert_array_equal(sdss.images.numpy(), x)


def test_second_fetch_skips_complete_files(server, tmp_path):
    assert _fetch("sdss", "--data-dir", str(tmp_path)).exit_code == 0
    server.log.clear()
    result = _fetch("sdss", "--data-dir", str(tmp_path))
    assert result.exit_code == 0
    assert result.output.count("already present") == 2
    assert [p for m, p, r in server.log if "/files/" in p] == []  # only the API document


def test_dropped_connection_is_resumed_with_range(server, tmp_path):
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


def test_server_errors_are_retried(server, tmp_path):
    name = "SimReal_TARGET_X_postmergers_SDSS.npy"
    server.faults[f"/api/records/{RECORD}/files/{name}/content"] = ["500", "500"]
    server.faults[f"/api/records/{RECORD}"] = ["500"]
    result = _fetch("sdss", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(server.gets(f"/{name}/content")) == 3
    assert (_folder(tmp_path) / name).read_bytes() == server.zenodo[name]


def test_stalled_transfer_times_out_and_resumes(server, tmp_path, monkeypatch):
    from galmerge import download

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


def test_deepmerge1_fits_from_mast(server, tmp_path):
    result = _fetch("deepmerge1", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "structure verified" in result.output
    s = load_imageset("illustris:deepmerge1-noisy")
    assert len(s) == 4 and s.labels.tolist() == [0, 1, 0, 1]
    assert s.bands == ("F814W", "F160W", "F356W")


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
