"""classify's result journal: Arrow IPC segments (data only, checksummed), private folders only."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_classify import StampsSurvey, _catalog, fetch_lines, make_checkpoint, read_csv, run_cli

from galmerge.classification.outputs import CsvWriter, Hdf5Writer, ResultBlock, ResultJournal
from galmerge.classification.segments import SUFFIX
from galmerge.errors import GalmergeError


@pytest.fixture
def env(tmp_path, register_plugin, monkeypatch):
    """test_classify's setting: the ``stamps`` survey, a fetch log, a checkpoint."""
    register_plugin(StampsSurvey(), "stamps-test")
    log = tmp_path / "fetch.log"
    monkeypatch.setenv("GALMERGE_TEST_FETCH_LOG", str(log))
    monkeypatch.chdir(tmp_path)
    return tmp_path, make_checkpoint(tmp_path / "run" / "best.pt"), log


class _Plant:
    """A pickle that, when loaded, creates a file: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _interrupted_run(tmp: Path, n: int = 30) -> tuple[list[str], Path]:
    _catalog(tmp / "cat.csv", n)
    args = ["classify", str(tmp / "cat.csv"), "--model", str(tmp / "run" / "best.pt"),
            "--survey", "stamps", "--quiet", "--cache", str(tmp / "c.h5"), "--output",
            str(tmp / "out.csv"), "--chunk-rows", "2"]
    os.environ["GALMERGE_TEST_FETCH_LIMIT"] = "21"
    try:
        assert run_cli(*args).exit_code != 0  # stopped in the 11th chunk: one segment kept
    finally:
        del os.environ["GALMERGE_TEST_FETCH_LIMIT"]
    (folder,) = [p for p in (tmp / "out.csv.parts").iterdir() if p.is_dir()]
    return args, folder


def test_a_planted_pickle_segment_is_refused_in_one_line_and_never_runs(env):
    tmp, _, _ = env
    args, folder = _interrupted_run(tmp)
    proof = tmp / "code-ran"
    (folder / "seg-000000000099.pkl").write_bytes(pickle.dumps(("x", _Plant(proof))))
    res = run_cli(*args)
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "old pickle format" in lines[0] and "run the same command" in (
        lines[0]) and "Traceback" not in res.output
    assert not proof.exists()
    assert not (tmp / "out.csv").exists()


def test_a_pickle_under_a_segment_name_with_a_valid_checksum_is_redone_not_run(env):
    tmp, _, log = env
    args, folder = _interrupted_run(tmp)
    proof = tmp / "code-ran"
    blob = pickle.dumps((0, _Plant(proof)))
    digest = hashlib.sha256(blob).hexdigest()[:32]
    for seg in folder.glob(f"seg-*{SUFFIX}"):
        seg.unlink()
    (folder / f"seg-000000000000-{digest}{SUFFIX}").write_bytes(blob)
    n = len(fetch_lines(log))
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert "was unreadable" in res.output and not proof.exists()
    _, out = read_csv(tmp / "out.csv")
    assert len(out) == 30 and all(r[-1] == "ok" for r in out)
    assert len(fetch_lines(log)) - n <= 10  # stamps cached before the stop are reused


def test_parts_folder_writable_by_others_or_owned_by_another_user_is_refused(env):
    tmp, _, _ = env
    args, folder = _interrupted_run(tmp)
    parts = folder.parent
    assert parts.stat().st_mode & 0o077 == 0 and folder.stat().st_mode & 0o077 == 0
    parts.chmod(0o777)
    res = run_cli(*args)
    assert res.exit_code != 0 and "writable by every user" in res.output
    assert len(res.output.strip().splitlines()) == 1
    parts.chmod(0o700)
    if os.geteuid() == 0:  # only root can give a folder away
        os.chown(folder, 4242, -1)
        res = run_cli(*args)
        assert res.exit_code != 0 and "belongs to another user (uid 4242)" in res.output
        assert len(res.output.strip().splitlines()) == 1
        os.chown(folder, 0, -1)
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert len(read_csv(tmp / "out.csv")[1]) == 30


def test_journal_refuses_foreign_folder_directly(tmp_path):
    (tmp_path / "parts").mkdir(mode=0o777)
    (tmp_path / "parts").chmod(0o777)
    with pytest.raises(GalmergeError, match="writable by every user"):
        ResultJournal(tmp_path / "parts" / "rank00000")


def test_a_segment_column_of_an_extension_type_is_refused(tmp_path):
    """Nested columns are stored in their Arrow type; an extension type (whose reader could be
    code registered by any installed package) in a segment is refused, never decoded."""
    import pyarrow as pa

    from galmerge.classification.segments import (
        SegmentWriter,
        file_digest,
        read_segment,
        segment_name,
    )

    if not hasattr(pa, "uuid"):
        pytest.skip("pyarrow without the uuid extension type")
    path = tmp_path / "s.arrow"
    writer = SegmentWriter(path, ["u"], nested={"u": pa.uuid()})
    writer.write(0, ResultBlock({"u": np.array([b"0" * 16], dtype=object)}, np.array([0.5]),
                                np.array([0], np.int8), np.array(["ok"], dtype=object)))
    writer.close()
    named = path.rename(tmp_path / segment_name(0, file_digest(path)))
    with pytest.raises(ValueError, match="extension type"):
        list(read_segment(named))


# -- round trip: whatever a chunk holds, the writers see the same values after the journal ------

cells = st.one_of(
    st.none(), st.text(max_size=6), st.integers(-2**70, 2**70), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-2**63, 2**63 - 1).map(np.int64), st.floats(width=32).map(np.float32),
    st.booleans().map(np.bool_), st.binary(max_size=4),
    st.text(max_size=3).map(lambda t: t + "\udcff"),  # undecodable byte kept by surrogateescape
)


@st.composite
def blocks(draw):
    n = draw(st.integers(0, 6))
    cols = {
        "obj": np.array(draw(st.lists(cells, min_size=n, max_size=n)) + [None], dtype=object)[:n],
        "u64": np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)),
                        dtype=np.uint64),
        "f32": np.array(draw(st.lists(st.floats(width=32), min_size=n, max_size=n)), np.float32),
        "vec": np.arange(n * 6, dtype=">i2").reshape(n, 2, 3),
        "txt": np.array([f"t{i}" for i in range(n)], dtype="U3"),
    }
    p = np.array(draw(st.lists(st.floats(0, 1) | st.just(np.nan), min_size=n, max_size=n)),
                 dtype=np.float64)
    flag = np.where(np.isnan(p), -1, p >= 0.5).astype(np.int8)
    status = np.array(draw(st.lists(st.sampled_from(["ok", "bad-row: x\udcfe", "no-coverage"]),
                                    min_size=n, max_size=n)), dtype=object)
    return ResultBlock(cols, p, flag, status)


def _same_cell(a, b) -> bool:
    if type(a) is not type(b):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float | np.floating) and a != a:
        return b != b
    return a == b


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(parts=st.lists(blocks(), min_size=1, max_size=4), per_segment=st.integers(1, 3))
def test_blocks_round_trip_exactly_and_write_the_same_outputs(tmp_path, parts, per_segment):
    import shutil

    folder = tmp_path / "parts" / "rank0"
    shutil.rmtree(tmp_path / "parts", ignore_errors=True)
    journal = ResultJournal(folder, segment_chunks=per_segment)
    for i, b in enumerate(parts):
        journal.add(i, b)
    journal.finish(len(parts))  # the catalog: these chunks
    back = list(ResultJournal(folder).blocks())
    assert [i for i, _ in back] == list(range(len(parts)))
    for (_, got), want in zip(back, parts, strict=True):
        np.testing.assert_array_equal(got.p, want.p)
        assert got.flag.dtype == np.int8 and np.array_equal(got.flag, want.flag)
        assert got.status.tolist() == want.status.tolist()
        for name, values in want.columns.items():
            g = got.columns[name]
            if values.dtype != object:
                assert g.dtype == values.dtype and g.shape == values.shape
                assert g.tobytes() == values.tobytes()
            else:
                for a, b in zip(values, g, strict=True):
                    if isinstance(a, bytes):
                        a = a.decode("utf-8", "surrogateescape").rstrip()
                    assert _same_cell(a, b), (a, b)
    for writer_cls, name in ((CsvWriter, "o.csv"), (Hdf5Writer, "o.h5")):
        outs = []
        for src in (parts, [b for _, b in back]):
            w = writer_cls(tmp_path / name, list(parts[0].columns))
            try:
                for b in src:
                    w.write(b)
                w.commit()
                outs.append((tmp_path / name).read_bytes() if name.endswith(".csv")
                            else _h5_values(tmp_path / name))
            except GalmergeError as exc:  # mixed chunk types HDF5 cannot hold: same either way
                w.abort()
                outs.append(str(exc))
        assert outs[0] == outs[1]


def _h5_values(path: Path) -> list:
    import h5py

    with h5py.File(path) as f:
        return [(k, f[k].dtype.str, np.asarray(f[k][()]).tobytes()) for k in sorted(f)
                if f[k].dtype.kind != "O"] + [
            (k, [bytes(v) if isinstance(v, bytes) else v for v in f[k][()]]) for k in sorted(f)
            if f[k].dtype.kind == "O"]
