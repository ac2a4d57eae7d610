"""Issue 19 leftovers: fetched stamps survive a SIGKILL (item 7); a file-size limit during cache
compaction is one line, loses nothing, and the next run recovers (item 10)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from fake_sdss import FakeSdss
from test_classify import env, read_csv  # noqa: F401  (fixture)
from test_hardening import _jpeg_checkpoint, _near_galaxies

from galmerge.cutout_cache import CutoutCache, make_key

SHAPE = (3, 8, 8)
KIND = "test:g,r,i:8px"


def _stamp(i: int) -> np.ndarray:
    return np.full(SHAPE, float(i), dtype=np.float32)


def _classify_cmd(tmp: Path, ckpt: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "galmerge", "classify", str(tmp / "c.csv"), "--model",
            str(ckpt), "--quiet", "--survey", "sdss?check_footprint=false", "--workers",
            str(workers), "--cache", str(tmp / "c.h5"), "--output", str(tmp / "o.csv")]


@pytest.mark.slow
def test_sigkill_loses_no_fetched_jpeg_stamp(tmp_path):
    # Before: stamps waited in memory for a chunk of 256 or 10 s, so a SIGKILL after 20 of 60
    # fetches refetched all 20. Now each is logged as it arrives; only those still in flight
    # (at most 2 x --workers) are fetched again.
    workers = 2
    ckpt = _jpeg_checkpoint(tmp_path / "best.pt")
    with FakeSdss() as fake:
        fake.add_fault("getjpeg", "slow", times=-1, delay=0.05)
        (tmp_path / "c.csv").write_text(_near_galaxies(fake, 60))
        sub_env = {**os.environ, "GALMERGE_SDSS_SKYSERVER_URL": fake.url,
                   "GALMERGE_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
        cmd = _classify_cmd(tmp_path, ckpt, workers)
        proc = subprocess.Popen(cmd, env=sub_env, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while fake.count("getjpeg") < 20:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        first = fake.count("getjpeg")
        assert first < 60
        done = subprocess.run(cmd, env=sub_env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        again = fake.count("getjpeg") - first
    assert again <= 60 - first + 2 * workers, (first, again)
    _, rows = read_csv(tmp_path / "o.csv")
    assert [r[-1] for r in rows] == ["ok"] * 60
    assert not list((tmp_path / "c.h5.journal").glob(".arrivals~*"))  # replayed, removed


WRITER = """
import sys, numpy as np
from galmerge.cutout_cache import CutoutCache, make_key
cache = CutoutCache(sys.argv[1], "test:g,r,i:8px", (3, 8, 8))
for i in range(5):
    cache.put(make_key(f"id{i}", i, 0), f"id{i}", i, 0, np.full((3, 8, 8), float(i), np.float32))
cache.put(make_key("gone", 9, 0), "gone", 9, 0, None, "no-coverage")
print(cache._arrivals_path, flush=True)
sys.stdin.readline()
"""


def test_a_torn_arrival_record_is_dropped_and_the_rest_replayed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "c.h5")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    log = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(log, "ab") as fh:  # a record the kill cut short
        fh.write(b"GMA1\x10\x00\x00\x00" + b"\x00" * 9)
    data = log.read_bytes()
    cache = CutoutCache(tmp_path / "c.h5", KIND, SHAPE)
    keys = [make_key(f"id{i}", i, 0) for i in range(5)]
    assert cache.lookup(keys + [make_key("gone", 9, 0)]) == ["ok"] * 5 + ["no-coverage"]
    images, got = cache.images(keys)
    assert got.all() and [float(im[0, 0, 0]) for im in images] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert not log.exists()
    # a record whose pixels were changed fails its checksum: it and what follows are dropped
    (tmp_path / "d.journal").mkdir()
    bad = tmp_path / "d.journal" / log.name
    bad.write_bytes(data[:200] + bytes([data[200] ^ 1]) + data[201:])
    cache = CutoutCache(tmp_path / "d", KIND, SHAPE)
    assert cache.lookup(keys) == [None] * 5 and not bad.exists()
