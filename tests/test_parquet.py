"""Parquet catalogs in and out: every row in order, ids exact, native nulls, flat memory."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_classify import (
    CASJOBS,
    StampsSurvey,
    fetch_lines,
    make_checkpoint,
    oracle,
    read_csv,
    run_cli,
    stamp_for,
)

from galmerge.classification.catalogs import open_catalog
from galmerge.classification.outputs import ResultBlock, open_writer
from galmerge.errors import GalmergeError


@pytest.fixture
def env(tmp_path, register_plugin, monkeypatch):
    register_plugin(StampsSurvey(), "stamps-test")
    monkeypatch.setenv("GALMERGE_TEST_FETCH_LOG", str(tmp_path / "fetch.log"))
    monkeypatch.chdir(tmp_path)
    return tmp_path, make_checkpoint(tmp_path / "run" / "best.pt")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b if not isinstance(a, float) else a == b


def _cells(values) -> list:
    return [v.item() if isinstance(v, np.generic) else v for v in values]


# -- the reader: property tests like the other readers' -----------------------------------------

maybe_coord = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                        st.floats(-90, 90))
text_cell = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=8))


@st.composite
def parquet_tables(draw):
    n = draw(st.integers(0, 20))
    ids = draw(st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), min_size=n,
                        max_size=n))
    digits = draw(st.lists(st.integers(10**18, 2**63 - 1).map(str), min_size=n, max_size=n))
    table = pa.table({
        "objID": pa.array(ids, pa.int64()),
        "ra": pa.array(draw(st.lists(maybe_coord, min_size=n, max_size=n)), pa.float64()),
        "dec": pa.array(draw(st.lists(maybe_coord, min_size=n, max_size=n)), pa.float32()),
        "text_id": pa.array(digits, pa.string()),
        "note": pa.array(draw(st.lists(text_cell, min_size=n, max_size=n)), pa.string()),
        "clean": pa.array(draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n,
                                        max_size=n)), pa.bool_()),
        "band": pa.array(draw(st.lists(st.sampled_from(["g", "r"]), min_size=n, max_size=n)),
                         pa.string()).dictionary_encode(),
    })
    return table, draw(st.integers(1, 7)), draw(st.integers(1, 6))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=parquet_tables())
def test_every_row_comes_out_in_order_exactly_as_pyarrow_reads_it(tmp_path, case):
    table, group, chunk = case
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=group)
    cat = open_catalog(path)
    assert (cat.ra_col, cat.dec_col, cat.id_col) == ("ra", "dec", "objID")
    assert cat.estimated_rows() == table.num_rows
    chunks = list(cat.chunks(chunk))
    assert [c.start for c in chunks] == list(range(0, table.num_rows, chunk))[: len(chunks)]
    assert all(len(c) <= chunk for c in chunks)
    expected = table.to_pydict()
    for name in cat.columns:
        got = [v for c in chunks for v in _cells(c.columns[name])]
        assert len(got) == table.num_rows
        assert all(_same(g, e) for g, e in zip(got, expected[name], strict=True)), name
    ids = [i for c in chunks for i in c.ids]
    assert ids == ["" if v is None else str(v) for v in expected["objID"]]  # 64-bit exact
    notes = [n for c in chunks for n in c.problems]
    ok = [ra is not None and dec is not None and math.isfinite(ra) and math.isfinite(dec)
          and 0 <= ra <= 360 and abs(dec) <= 90
          for ra, dec in zip(expected["ra"], expected["dec"], strict=True)]
    assert notes == ["" if g else "bad-coordinates" for g in ok]
    # 19-digit text ids picked with --id-col stay text, exact
    cat = open_catalog(path, id_col="text_id")
    assert [i for c in cat.chunks(chunk) for i in c.ids] == expected["text_id"]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=parquet_tables())
def test_parquet_output_keeps_types_values_and_nulls(tmp_path, case):
    table, group, chunk = case
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=group)
    cat = open_catalog(tmp_path / "t.parquet")
    out = tmp_path / "o.parquet"
    writer = open_writer(out, cat.columns)
    writer.ROW_GROUP = 5  # several row groups
    for part in cat.chunks(chunk):
        ok = part.problems == ""
        p = np.where(ok, np.nan_to_num(part.ra) % 1.0, np.nan)
        writer.write(ResultBlock(part.columns, p, np.where(ok, p >= 0.5, -1).astype(np.int8),
                                 np.where(ok, "ok", part.problems)))
    writer.commit()
    back = pq.read_table(out)
    expected = table.to_pydict()
    got = back.to_pydict()
    for name in cat.columns:
        if any(v is not None for v in expected[name]):
            assert all(_same(g, e) for g, e in zip(got[name], expected[name], strict=True)), name
    assert back.schema.field("status").type == pa.dictionary(pa.int32(), pa.string())
    assert back.schema.field("is_merger").type == pa.int8()
    for p, flag, status in zip(got["p_merger"], got["is_merger"], got["status"], strict=True):
        assert (p is None) == (flag is None) == (status != "ok")
    for name in ("objID", "ra", "clean"):
        if any(v is not None for v in expected[name]):
            assert back.schema.field(name).type == table.schema.field(name).type
    # given the input's schema (as classify does for Parquet input), every type is kept
    writer = open_writer(out, cat.columns, arrow_types=cat.arrow_types)
    writer.ROW_GROUP = 3
    for part in cat.chunks(chunk):
        n = len(part)
        writer.write(ResultBlock(part.columns, np.full(n, np.nan), np.full(n, -1, np.int8),
                                 np.full(n, "bad-coordinates", dtype=object)))
    writer.commit()
    back = pq.read_table(out).select(cat.columns)
    assert back.schema.remove_metadata() == table.schema.remove_metadata()
    got = back.to_pydict()
    for name, values in table.to_pydict().items():
        assert all(_same(g, e) for g, e in zip(got[name], values, strict=True)), name


def test_unreadable_and_mismatched_parquet_are_one_line_errors(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"PAR1" + b"\0" * 100)
    with pytest.raises(GalmergeError, match="cannot read as Parquet") as info:
        open_catalog(p)
    assert "\n" not in str(info.value)
    writer = open_writer(tmp_path / "o.parquet", ["x"])
    writer.write(ResultBlock({"x": np.array([1, 2], np.int64)}, np.array([0.1, 0.2]),
                             np.array([0, 0], np.int8), np.array(["ok", "ok"], dtype=object)))
    writer.write(ResultBlock({"x": np.array(["a", None], dtype=object)}, np.array([0.1, 0.2]),
                             np.array([0, 0], np.int8), np.array(["ok", "ok"], dtype=object)))
    with pytest.raises(GalmergeError, match=r"write the output as \.csv"):
        writer.commit()
    writer.abort()
    assert not (tmp_path / "o.parquet").exists()


# -- classify end to end ---------------------------------------------------------------------

def test_classify_parquet_in_and_out_matches_the_csv_run(env):
    import csv

    tmp, ckpt = env
    rows = list(csv.reader(CASJOBS.splitlines()[2:]))
    ids = [r[0] for r in rows]
    table = pa.table({
        "objID": pa.array([int(i) if i.isdigit() else None for i in ids], pa.int64()),
        "name": pa.array(ids, pa.string()),
        "ra": pa.array([_float(r[1]) for r in rows], pa.float64()),
        "dec": pa.array([_float(r[2]) for r in rows], pa.float64()),
    })
    pq.write_table(table, tmp / "cat.parquet", row_group_size=4)
    (tmp / "cat.csv").write_text(CASJOBS)
    base = ["--model", str(ckpt), "--survey", "stamps", "--quiet", "--cache", str(tmp / "c.h5"),
            "--chunk-rows", "3"]
    assert run_cli("classify", str(tmp / "cat.csv"), *base, "--output",
                   str(tmp / "o.csv")).exit_code == 0
    res = run_cli("classify", str(tmp / "cat.parquet"), *base, "--id-col", "name",
                  "--output", str(tmp / "o.parquet"))
    assert res.exit_code == 0, res.output
    out = pq.read_table(tmp / "o.parquet")
    _, csv_rows = read_csv(tmp / "o.csv")
    got = out.to_pydict()
    assert got["objID"] == table.column("objID").to_pylist()  # int64 exact, nulls kept
    assert got["name"] == ids  # 19-digit text exact
    assert got["status"] == [r[-1] for r in csv_rows]
    for p, r in zip(got["p_merger"], csv_rows, strict=True):
        assert (p is None) == (r[-3] == "") and (p is None or f"{p:.6g}" == r[-3])
    ok = [i for i, s in enumerate(got["status"]) if s == "ok"]
    expected = oracle(ckpt, np.stack([stamp_for(got["ra"][i], got["dec"][i]) for i in ok]))
    np.testing.assert_allclose([got["p_merger"][i] for i in ok], expected, atol=1e-5)
    res = run_cli("classify", str(tmp / "cat.parquet"), *base)  # default output: CSV
    assert res.exit_code == 0 and (tmp / "cat_galmerge.csv").exists()


def test_parquet_in_and_out_keeps_times_dates_decimals_and_bytes(env):
    """Timestamp, date, decimal, binary, list and struct columns keep their type and values;
    times and durations come out as the text the CSV output writes. Before, any of them
    stopped the run ("holds values in a later chunk that do not fit")."""
    import datetime
    import decimal

    tmp, ckpt = env
    n = 7
    when = [datetime.datetime(2020, 1, 1, 12, 30, 0, 250 * i) for i in range(n)]
    table = pa.table({
        "objid": pa.array(range(n), pa.int64()),
        "ra": pa.array([10.0 + i for i in range(n)]), "dec": pa.array([1.0 + i for i in range(n)]),
        "when": pa.array(when, pa.timestamp("us")),
        "utc": pa.array([w.replace(tzinfo=datetime.UTC) for w in when],
                        pa.timestamp("ms", tz="UTC")),
        "ns": pa.array([1_577_881_800_123_456_789 + i for i in range(n)], pa.timestamp("ns")),
        "day": pa.array([datetime.date(2020, 1, 1 + i) for i in range(n)], pa.date32()),
        "flux": pa.array([decimal.Decimal(f"{i}.125") for i in range(n)], pa.decimal128(9, 3)),
        "raw": pa.array([b"\x00\xffab", None, *[bytes([i]) * 2 for i in range(1, n - 1)]]),
        "lst": pa.array([[i, i + 1] for i in range(n)], pa.list_(pa.int64())),
        "st": pa.array([{"a": i} for i in range(n)]),
        "dur": pa.array([datetime.timedelta(seconds=i) for i in range(n)], pa.duration("s")),
        "tns": pa.array([45_296_000_000_001 + i for i in range(n)], pa.time64("ns")),
        "tus": pa.array([datetime.time(12, 34, 56, i) for i in range(n)], pa.time64("us")),
    })
    pq.write_table(table, tmp / "cat.parquet", row_group_size=3)
    res = run_cli("classify", str(tmp / "cat.parquet"), "--model", str(ckpt), "--survey",
                  "stamps", "--quiet", "--chunk-rows", "2", "--output", str(tmp / "o.parquet"))
    assert res.exit_code == 0, res.output
    out = pq.read_table(tmp / "o.parquet")
    for name in ("when", "ns", "day", "flux", "raw"):
        assert out.schema.field(name).type == table.schema.field(name).type, name
        assert out.column(name).to_pylist() == table.column(name).to_pylist(), name
    assert out.column("utc").to_pylist() == [w.replace(microsecond=w.microsecond // 1000 * 1000,
                                                       tzinfo=datetime.UTC)
                                             for w in when]
    assert out.schema.field("utc").type == pa.timestamp("ms", tz="UTC")
    for name in ("lst", "st"):
        assert out.schema.field(name).type == table.schema.field(name).type, name
        assert out.column(name).to_pylist() == table.column(name).to_pylist(), name
    assert out.schema.field("dur").type == pa.string()
    assert out.column("dur").to_pylist()[1] == "0:00:01"
    assert out.schema.field("tns").type == out.schema.field("tus").type == pa.string()
    assert out.column("tns").to_pylist()[:2] == ["12:34:56.000000001", "12:34:56.000000002"]
    assert out.column("tus").to_pylist()[:2] == ["12:34:56", "12:34:56.000001"]


def _nested_catalog(n: int) -> pa.Table:
    """Positions the stamps survey covers, with list, struct, map and fixed-size list columns
    holding nested nulls, NaN, empty lists and null cells."""
    lst = [None if i % 5 == 4 else [] if i % 5 == 3 else [float(i), None, math.nan, -0.5 * i]
           for i in range(n)]
    st = [None if i % 4 == 2 else {"a": i if i % 3 else None, "b": None if i % 2 else f"s{i}",
                                   "c": [float(i), None] if i % 3 else None}
          for i in range(n)]
    return pa.table({
        "objid": pa.array([1237648720693755918 + 7 * i for i in range(n)], pa.int64()),
        "ra": pa.array([(13.7 * i) % 360 for i in range(n)]),
        "dec": pa.array([(i * 0.37) % 60 - 30 for i in range(n)]),
        "lst": pa.array(lst, pa.list_(pa.float64())),
        "st": pa.array(st, pa.struct([("a", pa.int64()), ("b", pa.string()),
                                      ("c", pa.list_(pa.float32()))])),
        "kv": pa.array([None if i % 6 == 5 else [("k", i), ("z", None)] for i in range(n)],
                       pa.map_(pa.string(), pa.int32())),
        "pair": pa.array([[i, -i] for i in range(n)], pa.list_(pa.int16(), 2)),
    })


def test_lists_and_structs_keep_their_arrow_type_through_a_resumed_run(env, monkeypatch):
    """List, struct, map and fixed-size list columns of a Parquet catalog come out of a Parquet
    output in their own type and values, nested nulls and NaN included, also when the run was
    stopped and resumed from its result segments. Before, the segments kept such cells as text
    (lists and structs became ``string`` columns; a fixed-size list stopped the run)."""
    tmp, ckpt = env
    table = _nested_catalog(40)
    pq.write_table(table, tmp / "cat.parquet", row_group_size=7)
    args = ["classify", str(tmp / "cat.parquet"), "--model", str(ckpt), "--survey", "stamps",
            "--quiet", "--cache", str(tmp / "c.h5"), "--chunk-rows", "2", "--output",
            str(tmp / "o.parquet")]
    monkeypatch.setenv("GALMERGE_TEST_FETCH_LIMIT", "21")
    assert run_cli(*args).exit_code != 0  # stopped during the 11th chunk
    assert len(list((tmp / "o.parquet.parts").glob("*/seg-*.arrow"))) == 1  # 8 chunks kept
    monkeypatch.delenv("GALMERGE_TEST_FETCH_LIMIT")
    for path in tmp.glob("c.h5*"):  # without the cutout cache, the segment alone is resumed
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    n = len(fetch_lines(tmp / "fetch.log"))
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    assert len(fetch_lines(tmp / "fetch.log")) - n == 40 - 16  # its 16 rows are not redone
    out = pq.read_table(tmp / "o.parquet")
    assert out.column("status").to_pylist() == ["ok"] * 40
    for name in table.column_names:
        assert out.schema.field(name).type == table.schema.field(name).type, name
        # repr: NaN equals NaN, None is not NaN, and 1 is not 1.0
        assert repr(out.column(name).to_pylist()) == repr(table.column(name).to_pylist()), name


@pytest.mark.slow
def test_lists_and_structs_keep_their_arrow_type_through_a_torchrun_merge(env,
                                                                          busy_torchrun_ports):
    """Two processes' result segments, merged by rank 0, give the nested columns back in their
    type and values (each rank's segments store them as read)."""
    from test_classify import _script, _sub_env

    tmp, ckpt = env
    table = _nested_catalog(30)
    pq.write_table(table, tmp / "cat.parquet", row_group_size=4)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                           str(_script(tmp)), "classify", str(tmp / "cat.parquet"), "--model",
                           str(ckpt), "--survey", "stamps", "--quiet", "--chunk-rows", "3",
                           "--cache", str(tmp / "c-{rank}.h5"), "--output",
                           str(tmp / "o.parquet")], env=_sub_env(tmp / "fetch.log"),
                          timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = pq.read_table(tmp / "o.parquet")
    assert out.column("status").to_pylist() == ["ok"] * 30
    for name in table.column_names:
        assert out.schema.field(name).type == table.schema.field(name).type, name
        assert repr(out.column(name).to_pylist()) == repr(table.column(name).to_pylist()), name


def test_a_list_of_an_extension_type_is_kept_as_text(env):
    """A list or struct holding an extension type (``list<uuid>``) is not stored natively by
    the result segments, which refuse extension types: it stays a text column, as before
    nested types were kept (it stopped the run with a traceback when they were first)."""
    import uuid

    tmp, ckpt = env
    table = _nested_catalog(6).select(["objid", "ra", "dec"])
    values = pa.array([uuid.UUID(int=i).bytes for i in range(12)], pa.binary(16))
    ids = pa.ExtensionArray.from_storage(pa.uuid(), values)
    table = table.append_column("ids", pa.ListArray.from_arrays(
        pa.array([0, 2, 4, 6, 8, 10, 12], pa.int32()), ids))
    table = table.append_column("rec", pa.StructArray.from_arrays(
        [pa.ExtensionArray.from_storage(pa.uuid(), values.slice(0, 6))], ["u"]))
    pq.write_table(table, tmp / "cat.parquet")
    res = run_cli("classify", str(tmp / "cat.parquet"), "--model", str(ckpt), "--survey",
                  "stamps", "--quiet", "--output", str(tmp / "o.parquet"))
    assert res.exit_code == 0, res.output
    out = pq.read_table(tmp / "o.parquet")
    assert out.column("status").to_pylist() == ["ok"] * 6
    assert out.schema.field("ids").type == pa.string() == out.schema.field("rec").type
    assert all(out.column("ids").to_pylist()) and all(out.column("rec").to_pylist())


def test_lists_and_structs_are_json_text_in_csv_hdf5_and_fits(env):
    """Where the output format has no such type, a list, struct or map cell is JSON text that
    loads back to the cell (nested nulls as null, NaN as NaN); a null cell is empty."""
    import h5py
    from astropy.table import Table

    tmp, ckpt = env
    table = _nested_catalog(12)
    pq.write_table(table, tmp / "cat.parquet", row_group_size=5)
    expected = {name: table.column(name).to_pylist() for name in ("lst", "st", "kv")}
    texts = {}
    for suffix in ("csv", "h5", "fits"):
        res = run_cli("classify", str(tmp / "cat.parquet"), "--model", str(ckpt), "--survey",
                      "stamps", "--quiet", "--chunk-rows", "5", "--output",
                      str(tmp / f"o.{suffix}"))
        assert res.exit_code == 0, res.output
    header, rows = read_csv(tmp / "o.csv")
    texts["csv"] = {name: [r[header.index(name)] for r in rows] for name in expected}
    with h5py.File(tmp / "o.h5") as f:
        texts["h5"] = {name: [v.decode() for v in f[name][:]] for name in expected}
    fits = Table.read(tmp / "o.fits")
    texts["fits"] = {name: [str(v) for v in np.ma.filled(fits[name], "")] for name in expected}
    assert texts["csv"]["lst"][0] == "[0.0, null, NaN, -0.0]"
    assert texts["csv"]["st"][0] == '{"a": null, "b": "s0", "c": null}'
    assert texts["csv"]["kv"][0] == '[["k", 0], ["z", null]]'
    for fmt, columns in texts.items():
        for name, cells in columns.items():
            back = [None if c == "" else json.loads(c) for c in cells]
            want = [v if not isinstance(v, list) or name != "kv" else [list(e) for e in v]
                    for v in expected[name]]
            assert repr(back) == repr(want), (fmt, name)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


MEASURE = """
import sys, resource, tracemalloc
import numpy as np, pyarrow as pa
from pathlib import Path
from galmerge.classification.catalogs import open_catalog
from galmerge.classification.outputs import ResultBlock, open_writer
tracemalloc.start()
cat = open_catalog(sys.argv[1])
writer = open_writer(Path(sys.argv[2]), cat.columns)
rows = 0
for chunk in cat.chunks(4096):
    n = len(chunk)
    writer.write(ResultBlock(chunk.columns, np.full(n, 0.25), np.zeros(n, np.int8),
                             np.where(chunk.problems == "", "ok", chunk.problems)))
    rows += n
writer.commit()
print(rows, tracemalloc.get_traced_memory()[1], pa.default_memory_pool().max_memory(),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_memory_is_flat_from_1e5_to_1e6_rows(tmp_path):
    peaks = {}
    for n in (100_000, 1_000_000):
        path = tmp_path / f"c{n}.parquet"
        ids = np.arange(n, dtype=np.int64) + 1237648720693755918
        writer = pq.ParquetWriter(path, pa.schema([("objid", pa.int64()), ("ra", pa.float64()),
                                                   ("dec", pa.float64()), ("name", pa.string())]))
        for s in range(0, n, 100_000):  # row groups of 10^5 rows
            k = min(100_000, n - s)
            writer.write_table(pa.table({
                "objid": ids[s : s + k], "ra": np.linspace(0, 360, k),
                "dec": np.linspace(-80, 80, k), "name": [f"g{i}" for i in range(s, s + k)]}))
        writer.close()
        line = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(tmp_path / "o.pq")],
                              capture_output=True, text=True, check=True).stdout.split()
        rows, py_peak, arrow_peak, rss = map(int, line)
        assert rows == n
        peaks[n] = (py_peak, arrow_peak, rss)
        assert pq.ParquetFile(tmp_path / "o.pq").metadata.num_rows == n
    (tmp_path / "peaks.json").write_text(json.dumps(peaks))
    small, big = peaks[100_000], peaks[1_000_000]
    assert big[0] < 1.5 * small[0] + (8 << 20), peaks  # Python heap
    assert big[1] < 1.1 * small[1] + (4 << 20), peaks  # Arrow buffers (pre_buffer: 2x)
    assert big[2] < small[2] + (64 << 20), peaks  # resident set


def test_written_row_groups_go_out_as_they_come(tmp_path):
    writer = open_writer(tmp_path / "o.parquet", ["id"])
    writer.ROW_GROUP = 4
    for start in range(0, 12, 3):
        writer.write(ResultBlock({"id": np.arange(start, start + 3)}, np.full(3, 0.5),
                                 np.ones(3, np.int8), np.array(["ok"] * 3, dtype=object)))
    assert writer._held_rows < 4  # nothing piles up beyond a row group
    writer.commit()
    meta = pq.ParquetFile(tmp_path / "o.parquet").metadata
    assert meta.num_rows == 12 and meta.num_row_groups >= 2
    assert Path(tmp_path / "o.parquet").exists()
