"""Benchmark the cutout cache's storage: bytes per cached stamp and read/write rates, for the
previous layout (uncompressed float32), the current default (gzip + shuffle, bit exact) and
mantissa rounding (``--cache-keepbits``), plus the largest change of p_merger that rounding
causes. Prints one JSON object (``--out`` also writes it).

Stamps: ``synthetic:sdss`` renders (3x75x75 float32 in nanomaggies with SDSS-like sky noise),
the closest stand-in for SDSS frame cutouts available offline; pure noise compresses least, so
the ratio on real frames depends on their noise level. p_merger is compared on a randomly
initialised deepmerge network with its last layer scaled up (steep probabilities) and the
sdss preprocessing (arcsinh stretch); a trained model may be more or less sensitive.

    OMP_NUM_THREADS=1 python benchmarks/bench_cache_size.py [--n 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def _stamps(n: int) -> np.ndarray:
    from galmerge.data.datasets import load_imageset

    images = load_imageset(f"synthetic:sdss?n={n}&seed=11&cache=false").images.numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


def _store(images: np.ndarray, keepbits: int | None, previous: bool, tmp: Path) -> dict:
    """Write every stamp through the cache (journal chunks), compact, read all back at random."""
    from galmerge.classification import cutout_cache
    from galmerge.classification.cutout_cache import CutoutCache, make_key

    filters = cutout_cache.IMAGE_FILTERS
    if previous:  # the layout before compression: the same code with no filters
        cutout_cache.IMAGE_FILTERS = {}
    try:
        path = tmp / f"c-{keepbits}-{previous}.h5"
        kind, shape = "bench:g,r,i:75px", images.shape[1:]
        cache = CutoutCache(path, kind, shape, keepbits=keepbits, flush_rows=256)
        keys = [make_key(str(i), float(i % 360), 0.0) for i in range(len(images))]
        t0 = time.perf_counter()
        for i, key in enumerate(keys):
            cache.put(key, str(i), float(i % 360), 0.0, images[i])
            cache.maybe_flush()
        cache.close(compact=False)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        CutoutCache(path, kind, shape, keepbits=keepbits).compact()
        compact_s = time.perf_counter() - t0
        reader = CutoutCache(path, kind, shape, keepbits=keepbits)
        order = np.random.default_rng(0).permutation(len(keys))
        back = np.empty_like(images)
        t0 = time.perf_counter()
        for start in range(0, len(keys), 256):
            sel = order[start : start + 256]
            got, ok = reader.images([keys[i] for i in sel])
            assert ok.all()
            back[sel] = got
        read_s = time.perf_counter() - t0
        with h5py.File(path) as f:
            stamp_bytes = sum(f["images"].id.get_chunk_info(i).size for i in range(len(images)))
    finally:
        cutout_cache.IMAGE_FILTERS = filters
    return {"bytes_per_stamp": path.stat().st_size / len(images),
            "image_bytes_per_stamp": stamp_bytes / len(images),
            "write_stamps_per_s": len(images) / write_s,
            "compact_stamps_per_s": len(images) / compact_s,
            "read_stamps_per_s": len(images) / read_s,
            "back": back}


def _p_change(images: np.ndarray, rounded: np.ndarray) -> float:
    import torch

    from galmerge.data.preprocess import normalise
    from galmerge.models.inference import merger_probability
    from galmerge.models.model import build_model

    spec = {"stretch": "arcsinh", "stretch_scale": 0.05, "mean": [0.5] * 3, "std": [1.0] * 3}
    worst = 0.0
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("deepmerge", 3, images.shape[-1]).eval()
        with torch.no_grad():
            model.head[-1].weight.mul_(20)
            ps = []
            for x in (images, rounded):
                _, logits = model(normalise(torch.from_numpy(x), spec))
                ps.append(np.asarray(merger_probability(logits, 1.0)))
        worst = max(worst, float(np.max(np.abs(ps[0] - ps[1]))))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    images = _stamps(args.n)
    out: dict = {"stamps": args.n, "shape": list(images.shape[1:]),
                 "source": "synthetic:sdss renders (nanomaggies, SDSS-like sky noise)",
                 "cpu": platform.processor() or platform.machine(),
                 "load_1min": os.getloadavg()[0], "layouts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, keepbits, old in (("previous: uncompressed", None, True),
                                    ("default: gzip+shuffle, exact", None, False),
                                    ("keepbits 16", 16, False), ("keepbits 12", 12, False),
                                    ("keepbits 10", 10, False)):
            res = _store(images, keepbits, old, Path(tmp))
            back = res.pop("back")
            if keepbits is None:
                assert np.array_equal(back, images)
            else:
                rel = np.abs(back.astype(np.float64) - images) / np.maximum(
                    np.abs(images.astype(np.float64)), np.finfo(np.float32).tiny)
                res["max_relative_error"] = float(rel.max())
                res["bound"] = 2.0 ** -(keepbits + 1)
                res["max_p_merger_change"] = _p_change(images, back)
            out["layouts"][name] = res
            print(name, {k: round(v, 6) if isinstance(v, float) else v for k, v in res.items()},
                  flush=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
