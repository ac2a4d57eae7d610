"""Data I/O figures as JSON: HDF5 write/validate/lazy batch reads, .npy memmap reads, downloads.

Lazy reads are measured the way training walks an epoch: a shuffled permutation cut into
batches of 64 (each batch read in sorted order), against in-memory indexing and against
h5py's own point selection (``dset[sorted_indices]``) as the baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from galmerge.io import hdf5 as hdf5io
from galmerge.plugin.imageset import ImageSet  # noqa: E402
from galmerge.surveys.deepmerge import data as deepmerge_data  # noqa: E402
from galmerge.surveys.deepmerge import download

N = int(os.environ.get("BENCH_N", "4000"))
BATCH = 64


def _epoch_batches(n: int, seed: int = 0) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[i : i + BATCH]) for i in range(0, n, BATCH)]


def _rate(fn, batches) -> float:
    start = time.perf_counter()
    count = 0
    for idx in batches:
        count += len(fn(idx))
    return count / (time.perf_counter() - start)


def main() -> None:
    figures: dict[str, float | int | str] = {"images": N, "image_shape": "3x75x75 float32"}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3, 75, 75)).astype(np.float32)
    mb = x.nbytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "set.h5"
        s = ImageSet(torch.from_numpy(x), torch.zeros(N), np.arange(N), ("g", "r", "i"), "bench")
        t = time.perf_counter()
        hdf5io.write_imageset(path, s)
        figures["hdf5_write_MB_per_s"] = round(mb / (time.perf_counter() - t), 1)
        t = time.perf_counter()
        hdf5io.validate_imageset_file(path)
        figures["hdf5_validate_MB_per_s"] = round(mb / (time.perf_counter() - t), 1)
        batches = _epoch_batches(N)
        lazy = hdf5io.read_imageset(path, in_memory=False, validate=False)
        figures["hdf5_lazy_batch_images_per_s"] = round(_rate(lazy.batch, batches))
        with h5py.File(path) as f:
            dset = f["images"]
            figures["h5py_point_selection_images_per_s"] = round(_rate(lambda i: dset[i], batches))
        eager = hdf5io.read_imageset(path, in_memory=True, validate=False)
        figures["in_memory_batch_images_per_s"] = round(_rate(eager.batch, batches))
        npy = Path(tmp) / "x.npy"
        np.save(npy, x)
        arr = deepmerge_data.ArrayImages(npy, "npy", channels_last=False)
        figures["npy_memmap_batch_images_per_s"] = round(_rate(lambda i: arr[i], batches))

        # download over a loopback HTTP server: transfer + md5 + rename
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from loopback_http import LoopbackServer

        blob = npy.read_bytes()
        with LoopbackServer() as srv:
            srv.add("/f.npy", blob)
            remote = download.RemoteFile(
                "f.npy", srv.url + "/f.npy", len(blob), hashlib.md5(blob).hexdigest()
            )
            t = time.perf_counter()
            download.Downloader().fetch(remote, Path(tmp) / "dl")
            figures["loopback_download_MB_per_s"] = round(
                len(blob) / 1e6 / (time.perf_counter() - t), 1
            )
    figures["note"] = "2-core machine shared by several engineers during the run"
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
