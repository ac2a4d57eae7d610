"""The cutout cache on real HDF5 files: lookups, kinds kept apart, compaction, corruption, kills."""

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
from hypothesis import given, settings
from hypothesis import strategies as st

from galmerge.classification.cutout_cache import CutoutCache, make_key, round_mantissa
from galmerge.errors import GalmergeError
from galmerge.io.hdf5 import read_imageset

SHAPE = (3, 8, 8)
KIND = "test:g,r,i:8px"


def img(i: int) -> np.ndarray:
    return np.full(SHAPE, float(i), dtype=np.float32) + np.arange(64, dtype=np.float32).reshape(
        8, 8) / 100


def fill(cache: CutoutCache, ids, status: str = "ok") -> list[str]:
    keys = []
    for i in ids:
        key = make_key(f"id{i}", i * 0.5, -i * 0.25)
        cache.put(key, f"id{i}", i * 0.5, -i * 0.25, img(i) if status == "ok" else None, status)
        keys.append(key)
    return keys


def test_key_rounds_position_to_a_micro_degree():
    assert make_key("7", 10.0000001, -0.0000001) == make_key("7", 10.0, 0.0)
    assert make_key("7", 10.000001, 0.0) != make_key("7", 10.0, 0.0)
    assert make_key(" 7 ", 1, 2) == make_key("7", 1.0, 2.0)


def test_entries_survive_reopen_and_compaction(tmp_path):
    path = tmp_path / "c.h5"
    cache = CutoutCache(path, KIND, SHAPE, flush_rows=4, attrs={"bands": "g,r,i"})
    ok_keys = fill(cache, range(10))
    cache.maybe_flush()
    gone = fill(cache, range(100, 103), status="no-coverage")
    cache.close(compact=False)
    assert len(list((tmp_path / "c.h5.journal").glob("c-*.h5"))) == 2  # one per flush
    for compacted in (False, True):
        cache = CutoutCache(path, KIND, SHAPE)
        assert cache.lookup(ok_keys + gone + ["nope|1|2"]) == ["ok"] * 10 + ["no-coverage"] * 3 \
            + [None]
        images, got = cache.images(ok_keys[::-1])
        assert got.all()
        np.testing.assert_array_equal(images, np.stack([img(i) for i in range(9, -1, -1)]))
        cache.close(compact=not compacted)
    assert not list((tmp_path / "c.h5.journal").glob("c-*.h5"))
    # the consolidated file is a valid DESIGN image file
    imageset = read_imageset(path)
    assert len(imageset) == 10 and imageset.bands == ("g", "r", "i")
    assert sorted(imageset.ids.tolist()) == sorted(f"id{i}" for i in range(10))


def test_compaction_keeps_one_copy_of_repeated_keys(tmp_path):
    path = tmp_path / "c.h5"
    for _ in range(3):  # three processes fetched the same rows
        cache = CutoutCache(path, KIND, SHAPE)
        fill(cache, range(5))
        cache.flush()
        cache.close(compact=False)
    cache = CutoutCache(path, KIND, SHAPE)
    assert cache.compact()
    with h5py.File(path) as f:
        assert f["images"].shape[0] == 5


def test_different_kinds_never_mix(tmp_path):
    path = tmp_path / "c.h5"
    cache = CutoutCache(path, KIND, SHAPE)
    fill(cache, range(3))
    cache.close()
    with pytest.raises(GalmergeError, match="holds stamps of another kind"):
        CutoutCache(path, "test:u,g,r:8px", SHAPE)
    with pytest.raises(GalmergeError, match="not a galmerge cutout cache"):
        other = tmp_path / "other.h5"
        with h5py.File(other, "w") as f:
            f["images"] = np.zeros((1, *SHAPE), np.float32)
        CutoutCache(other, KIND, SHAPE)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "inconsistent"])
def test_damaged_file_is_set_aside_in_one_line(tmp_path, damage):
    path = tmp_path / "c.h5"
    cache = CutoutCache(path, KIND, SHAPE)
    keys = fill(cache, range(6))
    cache.close()
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:3000])
    elif damage == "garbage":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(5000))
    else:
        with h5py.File(path, "a") as f:
            f.attrs["n_images"] = 7  # datasets say 6
    messages: list[str] = []
    cache = CutoutCache(path, KIND, SHAPE, warn=messages.append)
    assert len(messages) == 1 and "is corrupt" in messages[0] and "\n" not in messages[0]
    assert cache.lookup(keys) == [None] * 6  # never used
    assert len(list(tmp_path.glob("c.h5.corrupt-*"))) == 1
    fill(cache, range(6))  # rebuilt
    cache.close()
    assert CutoutCache(path, KIND, SHAPE).lookup(keys) == ["ok"] * 6


WRITER = """
import sys, numpy as np
from galmerge.classification.cutout_cache import CutoutCache, make_key
cache = CutoutCache(sys.argv[1], "test:g,r,i:8px", (3, 8, 8), flush_rows=5)
i = 0
while True:
    cache.put(make_key(f"id{i}", i, 0), f"id{i}", i, 0, np.full((3, 8, 8), i, np.float32))
    cache.maybe_flush()
    if i % 5 == 4:
        print(i, flush=True)  # committed up to here
    i += 1
"""


@pytest.mark.slow
def test_sigkill_during_writes_keeps_every_committed_entry(tmp_path):
    path = tmp_path / "c.h5"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    committed = -1
    for delay in (0.3, 0.5, 0.8):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        start = time.monotonic()
        lines = []
        while time.monotonic() - start < 30:
            line = proc.stdout.readline()
            lines.append(int(line))
            if len(lines) > 3 and time.monotonic() - start > delay:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed = max(committed, lines[-1])
        cache = CutoutCache(path, "test:g,r,i:8px", (3, 8, 8), warn=pytest.fail)
        keys = [make_key(f"id{i}", i, 0) for i in range(lines[-1] + 1)]
        assert cache.lookup(keys) == ["ok"] * len(keys)
        images, got = cache.images(keys[-3:])
        assert got.all() and [float(im[0, 0, 0]) for im in images] == [
            float(i) for i in range(lines[-1] - 2, lines[-1] + 1)]
        cache.close(compact=delay == 0.5)  # also compact between kills
    assert committed > 0
    leftovers = [p for p in (tmp_path / "c.h5.journal").iterdir() if p.name.endswith(".tmp")]
    CutoutCache(path, "test:g,r,i:8px", (3, 8, 8))  # removes temporaries of dead writers
    assert all(not p.exists() for p in leftovers)


def test_missing_entries_become_ok_when_a_stamp_arrives(tmp_path):
    path = tmp_path / "c.h5"
    cache = CutoutCache(path, KIND, SHAPE)
    key = fill(cache, [1], status="no-coverage")[0]
    cache.flush()
    fill(cache, [1])  # coverage appeared (e.g. a new data release)
    cache.close()
    cache = CutoutCache(path, KIND, SHAPE)
    assert cache.lookup([key]) == ["ok"]


def test_shape_must_match(tmp_path):
    cache = CutoutCache(tmp_path / "c.h5", KIND, SHAPE)
    with pytest.raises(ValueError, match="stamp shape"):
        cache.put("k", "1", 0, 0, np.zeros((3, 9, 9), np.float32))
    assert isinstance(Path(cache.path), Path)


# -- compressed stamps: exact by default, old files still read, optional mantissa rounding -------

def _noisy(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return (rng.normal(0, 0.05, SHAPE) + i).astype(np.float32)


def test_new_files_are_compressed_bit_exact_and_old_uncompressed_files_still_read(tmp_path):
    path = tmp_path / "c.h5"
    # a cache as the previous version wrote it: uncompressed stamps, Fletcher-32 only
    old = CutoutCache(path, KIND, SHAPE)
    keys = [make_key(f"id{i}", i, 0) for i in range(6)]
    for i, k in enumerate(keys[:3]):
        old.put(k, f"id{i}", i, 0, _noisy(i))
    old.close(compact=False)
    (chunk,) = (tmp_path / "c.h5.journal").glob("c-*.h5")
    with h5py.File(chunk, "a") as f:
        data = f["images"][()]
        del f["images"]
        f.create_dataset("images", data=data, chunks=(1, *SHAPE), fletcher32=True)
        assert f["images"].compression is None
    cache = CutoutCache(path, KIND, SHAPE)
    for i, k in enumerate(keys[3:], start=3):
        cache.put(k, f"id{i}", i, 0, _noisy(i))
    cache.flush()
    new = sorted((tmp_path / "c.h5.journal").glob("c-*.h5"))[-1]
    with h5py.File(new) as f:
        assert f["images"].compression == "gzip" and f["images"].shuffle
        assert f.attrs["stamp_keepbits"] == 23 and f.attrs["stamp_max_relative_error"] == 0
    images, got = cache.images(keys)
    assert got.all() and all(np.array_equal(images[i], _noisy(i)) for i in range(6))
    assert cache.compact()  # old and new merged into one compressed file, still bit exact
    cache.close()
    with h5py.File(path) as f:
        assert f["images"].compression == "gzip" and f["images"].shape[0] == 6
    cache = CutoutCache(path, KIND, SHAPE)
    images, got = cache.images(keys)
    assert got.all() and all(np.array_equal(images[i], _noisy(i)) for i in range(6))
    cache.compact()  # compressed into compressed: chunks copied as they are, checked on the way
    cache = CutoutCache(path, KIND, SHAPE)
    images, got = cache.images(keys)
    assert got.all() and all(np.array_equal(images[i], _noisy(i)) for i in range(6))


def test_flipped_byte_in_a_compressed_stamp_is_caught_on_read(tmp_path):
    path = tmp_path / "c.h5"
    cache = CutoutCache(path, KIND, SHAPE)
    keys = [make_key(f"id{i}", i, 0) for i in range(4)]
    for i, k in enumerate(keys):
        cache.put(k, f"id{i}", i, 0, _noisy(i))
    cache.close()
    cache.compact()
    with h5py.File(path) as f:
        info = f["images"].id.get_chunk_info(1)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + info.size // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    messages: list[str] = []
    cache = CutoutCache(path, KIND, SHAPE, warn=messages.append)
    _, got = cache.images(keys)
    assert not got[1] and len(messages) == 1 and "is corrupt" in messages[0]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1,
                       max_size=20), keepbits=st.integers(1, 23))
def test_rounded_mantissas_stay_within_the_recorded_bound(values, keepbits):
    x = np.array(values, dtype=np.float32)
    y = round_mantissa(x, keepbits)
    finite = np.isfinite(x)
    assert np.array_equal(np.isnan(x), np.isnan(y)) and np.array_equal(x[np.isinf(x)],
                                                                       y[np.isinf(x)])
    assert np.isfinite(y[finite]).all()
    err = np.abs(y[finite].astype(np.float64) - x[finite])
    # relative for normal numbers; subnormals (below 1.2e-38) have fewer bits to begin with
    scale = np.maximum(np.abs(x[finite].astype(np.float64)), np.finfo(np.float32).tiny)
    assert (err <= 2.0 ** -(keepbits + 1) * scale).all()
    assert ((np.sign(y[finite]) == np.sign(x[finite])) | (y[finite] == 0)).all()
    low = np.uint32((1 << (23 - keepbits)) - 1)
    # zero low bits (what gzip shrinks), except a value kept truncated at the top of the range
    assert ((y[finite].view(np.uint32) & low) == 0).all()


def test_keepbits_stamps_are_rounded_and_never_mix_with_exact_ones(tmp_path):
    path = tmp_path / "c.h5"
    cache = CutoutCache(path, KIND, SHAPE, keepbits=10)
    key = make_key("a", 1, 1)
    cache.put(key, "a", 1, 1, _noisy(3))
    images, _ = cache.images([key])  # pending: already rounded, as later runs will read it
    np.testing.assert_array_equal(images[0], round_mantissa(_noisy(3), 10))
    cache.close()
    assert CutoutCache(path, KIND, SHAPE, keepbits=10).lookup([key]) == ["ok"]
    with h5py.File(path) as f:
        assert f.attrs["stamp_keepbits"] == 10 and f.attrs["stamp_max_relative_error"] == 2**-11
    with pytest.raises(GalmergeError, match="another kind"):
        CutoutCache(path, KIND, SHAPE)
    with pytest.raises(GalmergeError, match="keepbits must be 1..23"):
        CutoutCache(tmp_path / "d.h5", KIND, SHAPE, keepbits=0)


def test_a_cache_whose_stamps_live_in_another_file_is_refused(tmp_path):
    # a --cache file from someone else, in the pre-stamp_check format, whose 'images' is HDF5
    # external storage: it would have served any file the user can read as stamps
    path = tmp_path / "c.h5"
    cache = CutoutCache(path, KIND, SHAPE)
    keys = fill(cache, range(4))
    cache.close()
    raw = tmp_path / "elsewhere.bin"
    with h5py.File(path, "a") as f:
        images = f["images"][()]
        images.tofile(raw)
        del f["images"], f["stamp_check"]
        f.create_dataset("images", shape=images.shape, dtype=images.dtype,
                         external=[(str(raw), 0, images.nbytes)])
    with pytest.raises(GalmergeError, match="dataset 'images' is external storage in") as info:
        CutoutCache(path, KIND, SHAPE).lookup(keys)
    assert "\n" not in str(info.value)
    assert path.is_file() and not list(tmp_path.glob("c.h5.corrupt-*"))  # nothing moved
