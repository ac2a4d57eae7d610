"""HATS catalogs through LSDB on a real 2-process local Dask cluster: a new HATS catalog out,
per-partition caches, results independent of partition borders, a killed run resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_classify import TESTS, StampsSurvey, fetch_lines, make_checkpoint, oracle, stamp_for

lsdb = pytest.importorskip("lsdb")
distributed = pytest.importorskip("distributed")


class StampsOnWorkers(distributed.WorkerPlugin):
    """Registers the test's `stamps` survey in every worker process."""

    def setup(self, worker):
        sys.path.insert(0, str(TESTS))
        from test_classify import StampsSurvey as Survey

        from galmerge.plugin.manager import get_plugin_manager

        pm = get_plugin_manager()
        if not pm.pm.has_plugin("stamps-test"):
            pm.register(Survey(), name="stamps-test")


def _hats(tmp: Path, n: int = 60, margin: float | None = None,
          **more: object) -> tuple[Path, object]:
    import pandas as pd

    rng = np.random.default_rng(5)
    df = pd.DataFrame({
        "objid": np.arange(n, dtype=np.int64) + 1237648720693755918,
        "ra": np.round(rng.uniform(0, 360, n), 6),
        "dec": np.round(rng.uniform(-60, 60, n), 6),
        "mag": rng.uniform(15, 20, n),
        **more,
    })
    df.loc[3, "dec"] = 85.0  # no coverage
    cat = lsdb.from_dataframe(df, ra_column="ra", dec_column="dec", lowest_order=1,
                              highest_order=3, partition_rows=12, margin_threshold=margin)
    path = tmp / "cat_hats"
    cat.write_catalog(path, progress_bar=False)
    return path, df


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        client.register_plugin(StampsOnWorkers())
        yield lc


@pytest.fixture
def env(tmp_path, register_plugin, monkeypatch):
    register_plugin(StampsSurvey(), "stamps-test")
    log = tmp_path / "fetch.log"
    monkeypatch.setenv("GALMERGE_TEST_FETCH_LOG", str(log))
    monkeypatch.chdir(tmp_path)
    return tmp_path, make_checkpoint(tmp_path / "run" / "best.pt"), log


def test_hats_catalog_classified_partition_by_partition_on_two_workers(env, cluster):
    from distributed import Client
    from test_classify import run_cli

    tmp, ckpt, log = env
    src, df = _hats(tmp, margin=3600)  # LSDB's writer adds a margin catalog
    assert len(lsdb.open_catalog(src).margin.compute()) > 0
    with Client(cluster) as client:  # the workers log their fetches where this test reads
        client.run(lambda path: os.environ.update(GALMERGE_TEST_FETCH_LOG=path), str(log))
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  "--scheduler", cluster.scheduler_address, "--output", str(tmp / "out_hats"))
    assert res.exit_code == 0, res.output
    out = lsdb.open_catalog(tmp / "out_hats")
    inp = lsdb.open_catalog(src)
    assert out.get_healpix_pixels() == inp.get_healpix_pixels()  # same partitioning
    got = out.compute().sort_values("objid")
    assert list(got["objid"]) == list(df["objid"])  # every row once
    assert {"objid", "ra", "dec", "mag", "p_merger", "is_merger", "status"} <= set(got.columns)
    status = dict(zip(got["objid"], got["status"], strict=True))
    assert status[df.loc[3, "objid"]] == "no-coverage"
    ok = got[got["status"] == "ok"]
    assert len(ok) == len(df) - 1
    # rows on either side of a partition border: the same p as one by one, from their own stamp
    expected = oracle(ckpt, np.stack([stamp_for(r, d) for r, d in zip(ok["ra"], ok["dec"],
                                                                       strict=True)]))
    np.testing.assert_allclose(ok["p_merger"].astype(float), expected, atol=1e-5)
    assert (ok["is_merger"].astype(int) == (expected >= 0.5)).all()
    # each stamp fetched once: the input's margin rows are not classified again
    assert max(Counter(fetch_lines(log)).values()) == 1 and len(fetch_lines(log)) == len(df)
    assert out.margin is None and not list((tmp / "out_hats").glob("*arcs"))
    caches = sorted((tmp / "out_hats.cache").rglob("Npix=*.h5"))
    assert len(caches) == len(inp.get_healpix_pixels()) - 0  # one cache per partition
    props = next((tmp / "out_hats").rglob("hats.properties")).read_text()
    assert "galmerge_checkpoint_sha256" in props
    record = dict(ln.split("=", 1) for ln in props.splitlines() if ln.startswith("galmerge_"))
    # the input as the other formats record it: absolute, and a hash of its description
    assert record["galmerge_input"].strip() == str(src.resolve())
    assert len(record["galmerge_input_sha256"].strip()) == 64
    # the cutout kind the workers cached under, as the other formats record it
    kind = next(ln.split("=", 1)[1].strip() for ln in props.splitlines()
                if ln.startswith("galmerge_cutout_kind"))
    assert kind and kind.startswith("stamps")
    created = next(ln.split("=", 1)[1].strip() for ln in props.splitlines()
                   if ln.startswith("galmerge_created_utc"))
    assert time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")  # it was empty


KILLED = """
import sys
sys.path.insert(0, {tests!r})
from distributed import Client, LocalCluster
from test_hats import StampsOnWorkers
from test_classify import StampsSurvey
from galmerge.plugin.manager import get_plugin_manager
from galmerge.classification.hats import classify_hats
get_plugin_manager().register(StampsSurvey(), name="stamps-test")
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        client.register_plugin(StampsOnWorkers())
        classify_hats(sys.argv[1], sys.argv[2], output=sys.argv[3], survey="stamps",
                      scheduler=lc.scheduler_address, quiet=True)
"""


@pytest.mark.slow
def test_killed_hats_run_restarted_finishes_every_partition_exactly_once(env):
    tmp, ckpt, log = env
    src, df = _hats(tmp)
    script = tmp / "run_hats.py"
    script.write_text(KILLED.format(tests=str(TESTS)))
    cmd = [sys.executable, str(script), str(src), str(ckpt), str(tmp / "out_hats")]
    env_ = {**os.environ, "GALMERGE_TEST_FETCH_DELAY": "0.15", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.Popen(cmd, env=env_, start_new_session=True)
    done = tmp / "out_hats" / "out_hats" / "done"  # LSDB writes a collection: catalog below
    # generous: on a shared 2-core host under load the first partitions took over 240 s once
    deadline = time.monotonic() + 600
    while not (done.is_dir() and len(list(done.iterdir())) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    finished = {p.name for p in done.iterdir()}
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its Dask workers, mid-way
    proc.wait()
    first = Counter(fetch_lines(log))
    # what a kill a moment later leaves: a partition's histogram written (here torn) before
    # its done marker; LSDB's own resume refuses that, classify_hats redoes the partition
    inp = lsdb.open_catalog(src)
    todo = [p for p in inp.get_healpix_pixels() if f"{p.order}_{p.pixel}_done" not in finished]
    if todo:
        (done.parent / "hists").mkdir(exist_ok=True)
        (done.parent / "hists" / f"{todo[0].order}_{todo[0].pixel}_histogram.npz").write_bytes(
            b"PK\x03\x04")
    env_["GALMERGE_TEST_FETCH_DELAY"] = "0"
    subprocess.run(cmd, env=env_, check=True, timeout=300)
    out = lsdb.open_catalog(tmp / "out_hats").compute()
    assert sorted(out["objid"]) == sorted(df["objid"])  # every row exactly once
    assert (out["status"] != "").all()
    counts = Counter(fetch_lines(log))
    again = {k for k in counts if counts[k] > first.get(k, 0) and first.get(k, 0) > 0}
    # partitions written before the kill were not run again: none of their stamps refetched
    pixels = {tuple(map(int, name.split("_")[:2])) for name in finished}
    from galmerge.classification.cutout_cache import make_key  # noqa: F401  (keys name rows in the log)

    for pixel in inp.get_healpix_pixels():
        if (pixel.order, pixel.pixel) in pixels:
            part = inp.get_partition(pixel.order, pixel.pixel).compute()
            rows = {f"{i}|{r:.6f}|{d:.6f}" for i, r, d in zip(part["objid"], part["ra"],
                                                              part["dec"], strict=True)}
            assert not rows & again
    assert not done.exists()  # LSDB removes its progress files


@pytest.mark.parametrize("extra", [["--model", "SECOND"], ["--prior", "0.1"],
                                   ["--mc-dropout", "3"]])
def test_options_hats_cannot_do_yet_are_refused_in_one_line(env, extra):
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    second = make_checkpoint(tmp / "run2" / "best.pt")
    extra = [str(second) if e == "SECOND" else e for e in extra]
    res = run_cli("classify", str(src), "--model", str(ckpt), *extra, "--survey", "stamps",
                  "--quiet", "--output", str(tmp / "out_hats"))
    assert res.exit_code != 0 and "not supported for a HATS catalog folder" in res.output
    # galmerge fraction reads a file, not a HATS folder: the hint says how to get one
    assert "run galmerge fraction on a Parquet export of the output" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp / "out_hats").exists()


def test_a_folder_that_is_no_hats_catalog_is_a_one_line_error(env):
    from test_classify import run_cli

    tmp, ckpt, _ = env
    (tmp / "notes").mkdir()
    res = run_cli("classify", str(tmp / "notes"), "--model", str(ckpt), "--survey", "stamps")
    assert res.exit_code != 0 and "no HATS catalog" in res.output
    assert len(res.output.strip().splitlines()) == 1


def _fit_shift_stats(ckpt: Path) -> float:
    """Shift statistics for the test checkpoint, fitted as training fits them (on stamps the
    fake survey serves elsewhere on the sky); returns the threshold."""
    import torch

    from galmerge.models import shift
    from galmerge.models.model import load_model

    loaded = load_model(ckpt)
    rng = np.random.default_rng(1)
    pos = np.column_stack([rng.uniform(0, 360, 120), rng.uniform(-60, 60, 120)])
    images = torch.from_numpy(np.stack([stamp_for(r, d) for r, d in pos]))

    def features(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            feats, _ = loaded.model(loaded.preprocess["target"].apply(images[idx]))
        return feats.numpy(), idx % 2

    shift.fit_run(features, np.arange(80), np.arange(80, 120), ckpt.parent, loaded.sha256)
    stats, _ = shift.load(ckpt, loaded.sha256)
    assert stats is not None
    return float(stats["threshold"])


def test_hats_output_has_the_shift_columns_of_the_other_formats(env, cluster):
    import pandas as pd
    from distributed import Client
    from test_classify import run_cli

    tmp, ckpt, log = env
    threshold = _fit_shift_stats(ckpt)
    src, df = _hats(tmp, n=30)
    with Client(cluster) as client:
        client.run(lambda path: os.environ.update(GALMERGE_TEST_FETCH_LOG=path), str(log))
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  "--scheduler", cluster.scheduler_address, "--output", str(tmp / "out_hats"))
    assert res.exit_code == 0, res.output
    got = lsdb.open_catalog(tmp / "out_hats").compute().sort_values("objid")
    assert list(got.columns)[-5:] == ["p_merger", "is_merger", "status", "shift_score",
                                      "shift_flag"]
    assert str(got["shift_score"].dtype) == "double[pyarrow]"
    assert str(got["shift_flag"].dtype) == "int8[pyarrow]"
    # the same rows as a Parquet catalog through the single-process path: the same values
    flat = tmp / "flat.parquet"
    df.to_parquet(flat, index=False)
    res = run_cli("classify", str(flat), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  "--output", str(tmp / "flat_out.parquet"), "--cache", str(tmp / "flat.h5"))
    assert res.exit_code == 0, res.output
    want = pd.read_parquet(tmp / "flat_out.parquet", dtype_backend="pyarrow").sort_values(
        "objid")
    assert list(want.columns)[-2:] == ["shift_score", "shift_flag"]
    np.testing.assert_allclose(got["shift_score"].astype(float), want["shift_score"].astype(float),
                               rtol=1e-5)  # NaN (null) in the same rows
    assert got["shift_flag"].isna().tolist() == want["shift_flag"].isna().tolist()
    ok = got[got["status"] == "ok"]
    assert len(ok) == len(df) - 1 and got["shift_score"].isna().sum() == 1  # no-coverage row
    assert (ok["shift_flag"].astype(int) == (ok["shift_score"].astype(float) > threshold)).all()
    assert (ok["shift_flag"].to_numpy() == want[want["status"] == "ok"]["shift_flag"]
            .to_numpy()).all()
    props = next((tmp / "out_hats").rglob("hats.properties")).read_text()
    assert f"galmerge_shift_threshold={threshold!r}" in props.replace(" ", "")
    from galmerge.classification.hats import result_columns

    assert result_columns(ckpt) == ["shift_score", "shift_flag"]
    # a run without statistics: the three columns as before, one note
    (ckpt.parent / "shift_stats.npz").unlink()
    assert result_columns(ckpt) == []
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps",
                  "--scheduler", cluster.scheduler_address, "--output", str(tmp / "old_hats"))
    assert res.exit_code == 0, res.output
    assert res.output.count("no shift_stats.npz") == 1
    old = lsdb.open_catalog(tmp / "old_hats").compute()
    assert "shift_score" not in old.columns and list(old.columns)[-1] == "status"


def test_an_input_column_named_like_a_result_is_kept_beside_it(env, cluster):
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, df = _hats(tmp, status=["from the survey"] * 60)
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  "--scheduler", cluster.scheduler_address, "--output", str(tmp / "out_hats"))
    assert res.exit_code == 0, res.output
    got = lsdb.open_catalog(tmp / "out_hats").compute()
    # as in the other formats: the input's column stays, the result gets a suffix
    assert list(got.columns)[-3:] == ["p_merger", "is_merger", "status_1"]
    assert (got["status"] == "from the survey").all()
    assert (got["status_1"] == "ok").sum() == len(df) - 1


def test_columns_without_positions_keep_the_catalogs_ra_and_dec(env, cluster):
    """--columns objid,mag wrote a HATS catalog without its ra/dec columns, which LSDB
    cannot search (or read back as a catalog)."""
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, df = _hats(tmp, n=12)
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  "--columns", "objid,mag", "--scheduler", cluster.scheduler_address,
                  "--output", str(tmp / "out_hats"))
    assert res.exit_code == 0, res.output
    out = lsdb.open_catalog(tmp / "out_hats")
    assert list(out.columns) == ["objid", "mag", "ra", "dec", "p_merger", "is_merger", "status"]
    near = out.cone_search(df["ra"][0], df["dec"][0], 60).compute()
    assert list(near["objid"]) == [df["objid"][0]]


@pytest.mark.parametrize("option", ["--ra-col", "--dec-col", "--id-col"])
def test_a_wrong_column_option_is_one_line_and_leaves_no_folder(env, option):
    """A wrong --ra-col was found only inside the Dask workers: a multi-line traceback, and an
    output folder left behind."""
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  option, "nosuch", "--output", str(tmp / "out_hats"))
    assert res.exit_code != 0 and f"no column 'nosuch' for {option}" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp / "out_hats").exists() and not (tmp / "out_hats.cache").exists()


def test_one_column_for_ra_and_dec_is_one_line_and_leaves_no_folder(env):
    """--ra-col dec: every row at RA = Dec, classified without a word."""
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  "--ra-col", "dec", "--output", str(tmp / "out_hats"))
    assert res.exit_code != 0, res.output
    assert "--ra-col and --dec-col both name column 'dec'" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp / "out_hats").exists() and not (tmp / "out_hats.cache").exists()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two usable CPUs")
def test_the_local_cluster_has_one_worker_per_usable_cpu(env, monkeypatch):
    """The local cluster started os.cpu_count() workers, not one per CPU this process may use
    (a SLURM allocation, taskset)."""
    import dask.distributed

    from galmerge.classification.hats import classify_hats

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    asked = {}

    class Stop(Exception):
        pass

    def spy(**kwargs: object) -> None:  # records the cluster asked for, starts none
        asked.update(kwargs)
        raise Stop

    monkeypatch.setattr(dask.distributed, "LocalCluster", spy)
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        with pytest.raises(Stop):
            classify_hats(src, ckpt, output=tmp / "out_hats", survey="stamps", quiet=True)
    finally:
        os.sched_setaffinity(0, mask)
    assert asked["n_workers"] == 1


def test_a_cache_inside_the_output_is_one_line_and_leaves_no_folder(env):
    """--cache inside --output made the first run take the resume branch: no
    galmerge_run.json was written, and the same command again was refused."""
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    for cache in (tmp / "out_hats" / "cache", tmp / "out_hats"):
        res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps",
                      "--quiet", "--output", str(tmp / "out_hats"), "--cache", str(cache))
        assert res.exit_code != 0 and f"--cache {cache} is inside --output" in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert not (tmp / "out_hats").exists()


def test_an_unreachable_scheduler_is_one_line_and_leaves_no_folder(env):
    """--scheduler where no Dask scheduler runs gave an OSError traceback, a malformed address
    a ValueError traceback."""
    import socket

    import dask
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps",
                      "--quiet", "--scheduler", f"tcp://127.0.0.1:{port}",
                      "--output", str(tmp / "out_hats"))
    assert res.exit_code != 0, res.output
    assert f"--scheduler tcp://127.0.0.1:{port}: no Dask scheduler answers there" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp / "out_hats").exists() and not (tmp / "out_hats.cache").exists()
    for typo in ("localhost:notaport", "foo://127.0.0.1:8786"):  # a ValueError traceback
        res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps",
                      "--quiet", "--scheduler", typo, "--output", str(tmp / "out_hats"))
        assert res.exit_code != 0 and f"--scheduler {typo}: not a Dask scheduler address" \
            in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert not (tmp / "out_hats").exists() and not (tmp / "out_hats.cache").exists()


def test_the_same_hats_command_runs_again_and_kinds_are_checked(env, cluster):
    """--output DIR and --cache DIR were declared files only, so running the same command
    again on a HATS output failed with "is a directory"; a folder for a catalog file (or a
    file for a HATS catalog) is one line naming the option. Done markers left without their
    histograms (a kill as LSDB removes its progress files) are redone, not refused."""
    from test_classify import CASJOBS, run_cli

    tmp, ckpt, _ = env
    src, df = _hats(tmp, n=12)
    args = ["classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
            "--scheduler", cluster.scheduler_address, "--output", str(tmp / "out_hats"),
            "--cache", str(tmp / "hcache")]
    assert run_cli(*args).exit_code == 0
    # what a kill between LSDB's removal of hists/ and of done/ leaves: markers alone
    done = tmp / "out_hats" / "out_hats" / "done"
    done.mkdir()
    for p in lsdb.open_catalog(src).get_healpix_pixels():
        (done / f"{p.order}_{p.pixel}_done").touch()
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert not done.exists()
    got = lsdb.open_catalog(tmp / "out_hats").compute()
    assert sorted(got["objid"]) == sorted(df["objid"])
    (tmp / "f.csv").write_text(CASJOBS)
    for cat, option, value, kind in ((src, "--output", tmp / "f.csv", "file"),
                                     (src, "--cache", tmp / "f.csv", "file"),
                                     (tmp / "f.csv", "--output", tmp / "out_hats", "folder"),
                                     (tmp / "f.csv", "--cache", tmp / "hcache", "folder")):
        other = [] if option == "--output" else ["--output", str(tmp / "o.csv")]
        res = run_cli("classify", str(cat), "--model", str(ckpt), "--survey", "stamps",
                      "--quiet", *other, option, str(value))
        assert res.exit_code != 0 and f"{option} {value} is a {kind}" in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert (tmp / "f.csv").read_text() == CASJOBS and not (tmp / "o.csv").exists()


def test_a_rerun_with_other_settings_does_not_continue_the_output(env, cluster):
    """A rerun with another --threshold or --model continued the old output (LSDB's resume
    keeps the partitions written before), mixing results of two settings; it is refused in one
    line, and the output is left as it was. The same command still runs again."""
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, df = _hats(tmp, n=12)
    second = make_checkpoint(tmp / "run2" / "best.pt", seed=1)
    args = ["classify", str(src), "--survey", "stamps", "--quiet",
            "--scheduler", cluster.scheduler_address, "--output", str(tmp / "out_hats")]
    assert run_cli(*args, "--model", str(ckpt)).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp / "out_hats").rglob("*") if p.is_file()}
    for other, named in ((["--model", str(second)], "--model"),
                         (["--model", str(ckpt), "--threshold", "0.9"], "--threshold"),
                         (["--model", str(ckpt), "--columns", "objid,ra,dec"], "--columns")):
        res = run_cli(*args, *other)
        assert res.exit_code != 0 and f"--output {tmp / 'out_hats'} holds a run with other " \
            f"settings ({named}" in res.output
        assert "choose another --output, or delete the folder" in res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    # another catalog (or the same path written again) into that output: refused too
    (tmp / "b").mkdir()
    other_src, _ = _hats(tmp / "b", n=20)
    res = run_cli("classify", str(other_src), *args[2:], "--model", str(ckpt))
    assert res.exit_code != 0 and "other settings (the input catalog:" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert {p: p.read_bytes() for p in (tmp / "out_hats").rglob("*") if p.is_file()} == before
    # a partition file no longer in partition_info.csv (an earlier write's) is not counted
    stray = next((tmp / "out_hats").rglob("Npix=*.parquet"))
    stray.with_name("Npix=99999.parquet").write_bytes(stray.read_bytes())
    res = run_cli(*[a for a in args if a != "--quiet"], "--model", str(ckpt))
    assert res.exit_code == 0 and f"classified {len(df)} rows" in res.output  # resumed
    # the checkpoint retrained in place: the same long-lived workers use the new model
    make_checkpoint(ckpt, seed=1)
    res = run_cli(*args[:-1], str(tmp / "out2"), "--model", str(ckpt))
    assert res.exit_code == 0, res.output
    got = lsdb.open_catalog(tmp / "out2").compute()
    ok = got[got["status"] == "ok"]
    np.testing.assert_allclose(ok["p_merger"].astype(float), oracle(ckpt, np.stack(
        [stamp_for(r, d) for r, d in zip(ok["ra"], ok["dec"], strict=True)])), atol=1e-5)
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("mine")
    res = run_cli(*args[:-1], str(tmp / "mine"), "--model", str(ckpt))
    assert res.exit_code != 0 and "holds no record of a galmerge run" in res.output
    assert [p.name for p in (tmp / "mine").iterdir()] == ["notes.txt"]


def test_a_password_in_a_survey_option_is_in_no_hats_output_file(env, cluster):
    # the spec is recorded in hats.properties (provenance) and galmerge_run.json (what a rerun
    # must match): both without a URL's user info; the same command runs again
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, df = _hats(tmp, n=12)
    args = ["classify", str(src), "--model", str(ckpt), "--survey",
            "stamps?mirror=http://al:s3cretPW@127.0.0.1:9/x", "--quiet", "--scheduler",
            cluster.scheduler_address, "--output", str(tmp / "out_hats")]
    for _ in range(2):
        res = run_cli(*args)
        assert res.exit_code == 0, res.output
        assert "s3cretPW" not in res.output
    held = [p for p in tmp.rglob("*") if p.is_file() and b"s3cretPW" in p.read_bytes()]
    assert held == []
    record = (tmp / "out_hats" / "galmerge_run.json").read_text()
    assert "stamps?mirror=http://***@127.0.0.1:9/x" in record
    assert len(lsdb.open_catalog(tmp / "out_hats").compute()) == len(df)


# -- one run per output; a rerun continues: only partitions not verified complete are redone --

def _partition_files(out: Path) -> list[Path]:
    return sorted((out / out.name / "dataset").rglob("Npix=*.parquet"))


def _files_state(files: list[Path]) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def _read_back(out: Path):
    return lsdb.open_catalog(out).compute().sort_values("objid").reset_index(drop=True)


def _ids(log: Path, start: int) -> Counter:
    return Counter(line.split("|", 1)[0] for line in fetch_lines(log)[start:])


def test_a_rerun_recomputes_only_the_partitions_missing_or_damaged(env, cluster):
    """A rerun on a finished HATS output classified every partition again (LSDB's resume
    keeps nothing once a write has finished); it now checks each partition file against the
    record of the run that wrote it and redoes only a deleted or truncated one."""
    import pandas as pd
    import pyarrow.parquet as pq
    from distributed import Client
    from test_classify import run_cli

    tmp, ckpt, log = env
    src, df = _hats(tmp)
    out, cache = tmp / "out_hats", tmp / "hcache"
    with Client(cluster) as client:
        client.run(lambda path: os.environ.update(GALMERGE_TEST_FETCH_LOG=path), str(log))
    args = ["classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
            "--scheduler", cluster.scheduler_address, "--output", str(out), "--cache", str(cache)]
    assert run_cli(*args).exit_code == 0
    clean, first = _read_back(out), set(_ids(log, 0))
    files = _partition_files(out)
    assert len(files) >= 3
    before = _files_state(files)
    import shutil

    shutil.rmtree(cache)  # whatever is classified again now must fetch its stamps again
    n = len(fetch_lines(log))
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert len(fetch_lines(log)) == n and _files_state(files) == before  # nothing redone
    gone, torn = files[0], files[-1]
    damaged = {str(i) for f in (gone, torn) for i in pq.read_table(f)["objid"].to_pylist()}
    gone.unlink()
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    again = _ids(log, n)
    assert set(again) == damaged & first and max(again.values()) == 1  # their rows, once
    assert {p: s for p, s in _files_state(files).items() if p not in (gone, torn)} == {
        p: s for p, s in before.items() if p not in (gone, torn)}
    pd.testing.assert_frame_equal(_read_back(out), clean)


def test_a_kill_after_lsdb_finished_and_before_the_record_keeps_every_partition(
        env, cluster, monkeypatch):
    """A kill after LSDB finished writing (while it cleaned up, the cluster closed or the new
    files were hashed) left no `galmerge_partitions.json`: the next run classified every
    partition again. It keeps them (the folder reads as a catalog: LSDB writes that last) and
    writes the record. A rerun of a finished output reads no partition file at all."""
    import pandas as pd
    from test_classify import run_cli

    from galmerge.classification import hats_progress

    tmp, ckpt, log = env
    src, _ = _hats(tmp, n=30)
    out = tmp / "out_hats"
    args = ["classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
            "--scheduler", cluster.scheduler_address, "--output", str(out)]
    assert run_cli(*args).exit_code == 0
    clean, files = _read_back(out), _partition_files(out)
    before = _files_state(files)
    (out / hats_progress.RECORD).unlink()  # as that kill leaves it
    n = len(fetch_lines(log))
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert len(fetch_lines(log)) == n and _files_state(files) == before  # nothing redone
    assert (out / hats_progress.RECORD).is_file()
    hashed = []
    monkeypatch.setattr(hats_progress, "sha256_file", lambda p: hashed.append(p) or "")
    assert run_cli(*args).exit_code == 0
    assert hashed == [] and _files_state(files) == before  # size and time match: not read
    pd.testing.assert_frame_equal(_read_back(out), clean)


def test_a_full_disk_while_workers_write_is_one_line(env, cluster, monkeypatch):
    """LSDB hands a worker's `[Errno 28] No space left on device` on as a RuntimeError, which
    reached the user as a traceback; it is one line saying what to do."""
    import lsdb.catalog
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)

    def full(self, *a, **k):
        raise RuntimeError("Error applying function perform_write to partition 3: "
                           "[Errno 28] No space left on device")

    monkeypatch.setattr(lsdb.catalog.Catalog, "write_catalog", full)
    res = run_cli("classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                  "--scheduler", cluster.scheduler_address, "--output", str(tmp / "out_hats"))
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], res.output
    assert "free space and run the same command again" in lines[0]


@pytest.mark.parametrize("device", ["AUTO", "Auto", None])
def test_any_spelling_of_auto_puts_the_hats_workers_on_the_cpu(env, monkeypatch, device):
    """Only the exact string "auto" became "cpu" for the Dask workers; `--device AUTO` or
    `device=None` from Python let each worker pick a GPU for itself."""
    import galmerge
    from galmerge.classification import hats

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    seen = {}

    def record(catalog, model, **kw):
        seen["device"] = kw["device"]
        raise SystemExit(0)

    monkeypatch.setattr(hats, "classify_hats", record)
    with pytest.raises(SystemExit):
        galmerge.classify(str(src), str(ckpt), survey="stamps", device=device, quiet=True)
    assert seen["device"] == "cpu"


def test_a_rerun_under_an_lsdb_without_its_progress_writers_redoes_every_partition(
        env, cluster, monkeypatch):
    """Keeping a finished partition uses LSDB 0.11's progress-file writers
    (``lsdb.io.to_hats``); an LSDB without them must not fail the rerun: it classifies every
    partition again, as before the record existed, and the catalog reads back the same."""
    import importlib

    import pandas as pd
    from test_classify import run_cli

    writers = importlib.import_module("lsdb.io.to_hats")  # (lsdb.io.to_hats is a function)
    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=30)
    out = tmp / "out_hats"
    args = ["classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
            "--scheduler", cluster.scheduler_address, "--output", str(out)]
    assert run_cli(*args).exit_code == 0
    clean = _read_back(out)
    files = _partition_files(out)
    files[0].write_bytes(files[0].read_bytes()[:100])  # one partition to redo at least
    before = {f: f.stat().st_mtime_ns for f in files[1:]}
    monkeypatch.delattr(writers, "write_done_pixel")
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert all(f.stat().st_mtime_ns != t for f, t in before.items())  # every one rewritten
    pd.testing.assert_frame_equal(_read_back(out), clean)


def test_a_rerun_killed_midway_never_leaves_an_output_that_reads_as_complete(
        env, cluster, monkeypatch):
    """A rerun that was redoing a damaged partition kept the finished run's hats.properties
    and partition_info.csv: killed there, the output read as a complete catalog with a torn
    partition. The folder now reads as a catalog only once the write has finished."""
    import importlib

    import hats
    import pandas as pd
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=30)
    out = tmp / "out_hats"
    args = ["classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
            "--scheduler", cluster.scheduler_address, "--output", str(out)]
    assert run_cli(*args).exit_code == 0
    clean = _read_back(out)
    torn = _partition_files(out)[0]
    torn.write_bytes(torn.read_bytes()[:100])

    def killed(*a, **k):
        raise KeyboardInterrupt  # as if the run were stopped before LSDB wrote a partition

    # (the module: lsdb.io's attribute of that name is its function)
    monkeypatch.setattr(importlib.import_module("lsdb.io.to_hats"), "write_partitions", killed)
    assert run_cli(*args).exit_code != 0
    monkeypatch.undo()
    for path in (out, out / out.name):
        with pytest.raises((FileNotFoundError, ValueError)):
            hats.read_hats(path)
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(_read_back(out), clean)


def test_a_hats_output_another_run_is_writing_is_refused_in_one_line(env, cluster):
    """Two classify runs could write the same HATS output at once (the other formats take
    `.OUTPUT.lock`; a HATS output took none). The second is now refused before any work."""
    from test_classify import run_cli

    tmp, ckpt, _ = env
    src, _ = _hats(tmp, n=12)
    out = tmp / "out_hats"
    holder = subprocess.Popen(  # another process holding the output's lock, as a run does
        [sys.executable, "-c", "import sys; from galmerge.io.atomic import exclusive_lock\n"
         "with exclusive_lock(sys.argv[1], 'busy'):\n print('held', flush=True)\n"
         " sys.stdin.read()", str(tmp / ".out_hats.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["classify", str(src), "--model", str(ckpt), "--survey", "stamps", "--quiet",
                "--scheduler", cluster.scheduler_address, "--output", str(out)]
        res = run_cli(*args)
        assert res.exit_code != 0
        error = res.output.strip().splitlines()
        assert len(error) == 1 and f"another galmerge classify is writing {out}" in error[0]
        assert "Traceback" not in res.output and not out.exists()
    finally:
        holder.communicate("", timeout=60)
    assert run_cli(*args).exit_code == 0  # released: the same command runs
    assert len(lsdb.open_catalog(out).compute()) == 12
