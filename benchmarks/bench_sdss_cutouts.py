"""SDSS cutout throughput against the loopback SDSS server (tests/fake_sdss.py), JSON.

Real-size frames (2048 x 1489, SDSS-like WCS, sky noise), many galaxies per field. Figures:
rows/s cold (lookup + download + decode + cut), warm from the disk frame cache (new service),
hot from the in-memory frame LRU, resampled to another pixel scale, and the JPEG path; plus
per-frame decode and per-stamp cut times. Usage: python benchmarks/bench_sdss_cutouts.py [N]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_sdss import FakeField, FakeGalaxy, FakeSdss  # noqa: E402

from galmerge.plugin.cutouts import CutoutRequest  # noqa: E402
from galmerge.surveys.sdss.cutouts import cut_stamp, decode_frame, make_cutout_service  # noqa: E402


def sky(per_field: int, seed: int = 0) -> tuple[list[FakeField], list[FakeGalaxy]]:
    rng = np.random.default_rng(seed)
    fields = [FakeField(3000, 2, 100 + i, 180.0 + 0.1 * i, 0.0, shape=(1489, 2048))
              for i in range(2)]
    galaxies = []
    for f in fields:
        for _ in range(per_field):
            # inside the frame: +-4.5' along the scan (RA), +-6.5' across it (Dec)
            galaxies.append(FakeGalaxy(f.ra + rng.uniform(-0.07, 0.07), rng.uniform(-0.1, 0.1),
                                       sigma_arcsec=float(rng.uniform(0.8, 2.0))))
    return fields, galaxies


def run(service, reqs) -> tuple[float, int]:
    t = time.perf_counter()
    ok = sum(r.status == "ok" for r in service.fetch(reqs))
    return time.perf_counter() - t, ok


def main() -> None:
    per_field = int(sys.argv[1]) if len(sys.argv) > 1 else 250
    fields, galaxies = sky(per_field)
    out: dict[str, object] = {
        "machine": f"{os.cpu_count()} CPUs shared with other jobs; figures are lower bounds",
        "rows": len(galaxies), "fields": len(fields), "frame_shape": [1489, 2048],
    }
    with FakeSdss(fields, galaxies, noise=0.02) as server, tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        for f in fields:
            for b in "gri":
                server.frame_bytes(f.run, f.camcol, f.field, b)
        out["server_render_s"] = round(time.perf_counter() - t, 2)
        blob = server.frame_bytes(fields[0].run, fields[0].camcol, fields[0].field, "r")
        out["frame_bz2_mb"] = round(len(blob) / 2**20, 2)
        t = time.perf_counter()
        frame = decode_frame(blob)
        out["frame_decode_s"] = round(time.perf_counter() - t, 3)
        for scale in (0.396, 0.8):
            cut_stamp(frame.data, frame.wcs, galaxies[0].ra, galaxies[0].dec, 75, scale)  # warm
            t = time.perf_counter()
            for g in galaxies[:100]:
                cut_stamp(frame.data, frame.wcs, g.ra, g.dec, 75, scale)
            out[f"cut_stamp_ms_per_band_{scale}arcsec"] = round((time.perf_counter() - t) * 10, 2)

        reqs = [CutoutRequest(i, g.ra, g.dec, str(i)) for i, g in enumerate(galaxies)]
        opts = {"skyserver_url": server.url, "sas_url": server.sas_url,
                "frame_cache_dir": str(Path(tmp) / "frames"), "workers": 4}
        pre = {"bands": ["g", "r", "i"], "image_size": 75, "pixel_scale_arcsec": 0.396,
               "image_source": "frames"}
        with make_cutout_service(pre, opts) as svc:
            secs, ok = run(svc, reqs)
            out["frames_cold_rows_per_s"] = round(len(reqs) / secs, 1)
            out["frames_cold_ok"] = ok
            secs, _ = run(svc, reqs)
            out["frames_hot_memory_rows_per_s"] = round(len(reqs) / secs, 1)
        with make_cutout_service(pre, opts) as svc:
            secs, _ = run(svc, reqs)
            out["frames_warm_disk_rows_per_s"] = round(len(reqs) / secs, 1)
        with make_cutout_service({**pre, "pixel_scale_arcsec": 0.8}, opts) as svc:
            secs, _ = run(svc, reqs)
            out["frames_resampled_0.8arcsec_warm_rows_per_s"] = round(len(reqs) / secs, 1)
        out["frame_downloads"] = server.count("frame-")
        out["lookup_queries"] = server.count("x_results.aspx")
        jpeg = {"bands": ["R", "G", "B"], "image_size": 75, "pixel_scale_arcsec": 0.4,
                "image_source": "jpeg"}
        with make_cutout_service(jpeg, opts) as svc:
            secs, ok = run(svc, reqs[:100])
            out["jpeg_rows_per_s"] = round(100 / secs, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
