"""Issue 19 leftovers: fetched stamps survive a SIGKILL (item 7); a file-size limit during cache
compaction is one line, loses nothing, and the next run recovers (item 10)."""

from __future__ import annotations

import os
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

from galmerge.classification.cutout_cache import CutoutCache, make_key

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
from galmerge.classification.cutout_cache import CutoutCache, make_key
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


COMPACT = """
import resource, sys
from galmerge.classification.cutout_cache import CutoutCache
if sys.argv[2] == "unchecked":  # as if the disk filled up after the check
    CutoutCache._check_room = lambda self, need: None
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
cache = CutoutCache(sys.argv[1], "test:g,r,i:8px", (3, 32, 32))
cache.close()
print("closed")
"""


@pytest.mark.parametrize("mode", ["checked", "unchecked"])
def test_a_file_size_limit_during_compaction_is_one_line_and_the_next_run_compacts(tmp_path,
                                                                                   mode):
    # Before: a 30-line h5py traceback (EFBIG, then "Can't decrement id ref count") and a
    # 1.2 MB partial copy left beside the cache.
    rng = np.random.default_rng(0)
    stamps = rng.random((120, 3, 32, 32), dtype=np.float32)  # incompressible: 12 kB each
    keys = [make_key(f"id{i}", i, 0) for i in range(len(stamps))]
    cache = CutoutCache(tmp_path / "c.h5", KIND, (3, 32, 32))
    for i, key in enumerate(keys):
        cache.put(key, f"id{i}", i, 0, stamps[i])
        if i % 40 == 39:
            cache.flush()  # three journal chunks of ~0.5 MB
    cache.close(compact=False)
    chunks = sorted((tmp_path / "c.h5.journal").glob("c-*.h5"))
    limit = 2 * max(c.stat().st_size for c in chunks)  # a chunk fits, the merged file not
    run = subprocess.run([sys.executable, "-c", COMPACT, str(tmp_path / "c.h5"), mode,
                          str(limit)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "closed\n", run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot compact the cutout cache" in lines[0], run.stderr[-2000:]
    assert str(tmp_path / "c.h5") in lines[0] and "ulimit -f" in lines[0]
    if mode == "unchecked":
        assert "File too large" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5.journal", "c.h5.lock"]
    assert sorted((tmp_path / "c.h5.journal").glob("c-*.h5")) == chunks  # nothing lost
    cache = CutoutCache(tmp_path / "c.h5", KIND, (3, 32, 32))
    images, got = cache.images(keys)
    assert got.all() and np.array_equal(images, stamps)
    assert cache.compact()  # without the limit: the next run compacts
    cache.close()
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["n_images"] == len(stamps)
    assert not list((tmp_path / "c.h5.journal").iterdir())
