"""Catalog reading: SkyServer/CasJobs CSV, FITS, VOTable; malformed input never loses a row."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galmerge.classification.catalogs import open_catalog
from galmerge.classification.outputs import CsvWriter, ResultBlock
from galmerge.errors import GalmergeError

REPO = Path(__file__).resolve().parents[1]


def rows_of(cat, chunk_rows: int = 3):
    chunks = list(cat.chunks(chunk_rows))
    starts = [c.start for c in chunks]
    assert starts == sorted(starts) and all(len(c) <= chunk_rows for c in chunks)
    cols = {n: [v for c in chunks for v in c.columns[n]] for n in cat.columns}
    notes = [v for c in chunks for v in c.problems]
    ids = [v for c in chunks for v in c.ids]
    ra = np.concatenate([c.ra for c in chunks]) if chunks else np.zeros(0)
    return cols, notes, ids, ra


def test_casjobs_csv_with_table_line_keeps_19_digit_ids(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text("#Table1\nobjID,RA,DEC,z\n"
                 "1237648720693755918,229.525575,-0.885272,0.05\n"
                 "1237657856607059990,124.075,49.2178,\n")
    cat = open_catalog(p)
    assert (cat.ra_col, cat.dec_col, cat.id_col) == ("RA", "DEC", "objID")
    cols, notes, ids, ra = rows_of(cat)
    assert ids == ["1237648720693755918", "1237657856607059990"]
    assert cols["z"] == ["0.05", ""]
    assert notes == ["", ""]
    np.testing.assert_allclose(ra, [229.525575, 124.075])


@pytest.mark.parametrize("header,expect", [
    ("ra_deg,dec_deg,specObjID", ("ra_deg", "dec_deg", "specObjID")),
    ("RAJ2000,DEJ2000,Name", ("RAJ2000", "DEJ2000", "Name")),
    ("id,Ra,Dec", ("Ra", "Dec", "id")),
    ("ra,dec", ("ra", "dec", None)),
])
def test_columns_found_case_insensitively(tmp_path, header, expect):
    p = tmp_path / "c.csv"
    p.write_text(header + "\n" + ",".join(["1"] * len(header.split(","))) + "\n")
    cat = open_catalog(p)
    assert (cat.ra_col, cat.dec_col, cat.id_col) == expect
    _, _, ids, _ = rows_of(cat)
    assert ids == (["1"] if expect[2] else ["0"])  # no id column: the row number


def test_bad_values_get_a_status_and_rows_are_never_dropped(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("objid,ra,dec,x\n"
                 "1,10,10,a\n"       # fine
                 "2,,10,b\n"         # empty ra
                 "3,ten,10,c\n"      # text
                 "4,-1,10,d\n"       # out of range
                 "5,10,91,e\n"       # out of range
                 "6,inf,0,f\n"       # not finite
                 "7,10\n"            # short row
                 "8,10,10,g,extra,more\n"  # long row
                 "\n"                # blank line: no row
                 ",,,\n")            # a row of empty fields
    cols, notes, ids, _ = rows_of(open_catalog(p))
    assert ids == ["1", "2", "3", "4", "5", "6", "7", "8", ""]
    assert notes == ["", "bad-coordinates", "bad-coordinates", "bad-coordinates",
                     "bad-coordinates", "bad-coordinates", "bad-row: 2 fields, header has 4",
                     "bad-row: 6 fields, header has 4", "bad-coordinates"]
    assert cols["x"][7] == "g,extra,more"  # the extra text is kept, not lost


def test_missing_or_unknown_columns_are_one_line_errors(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(GalmergeError, match="cannot find the RA column.*--ra-col"):
        open_catalog(p)
    with pytest.raises(GalmergeError, match="no column 'nope' for --dec-col"):
        open_catalog(p, ra_col="a", dec_col="nope")
    (tmp_path / "empty.csv").write_text("#Table1\n\n")
    with pytest.raises(GalmergeError, match="no header row"):
        open_catalog(tmp_path / "empty.csv")
    with pytest.raises(GalmergeError, match="does not exist"):
        open_catalog(tmp_path / "none.csv")


def test_fits_table_is_read_in_chunks_with_exact_int64_ids(tmp_path):
    from astropy.table import Table

    n = 10
    ids = 1237648720693755918 + np.arange(n, dtype=np.int64) * 1001
    ra = np.linspace(0, 359, n)
    ra[4] = np.nan
    Table({"OBJID": ids, "RA": ra, "DEC": np.zeros(n), "flag": np.arange(n) % 2 == 0}).write(
        tmp_path / "c.fits")
    cat = open_catalog(tmp_path / "c.fits")
    assert cat.estimated_rows() == n
    cols, notes, got_ids, _ = rows_of(cat, 4)
    assert got_ids == [str(i) for i in ids]
    assert notes[4] == "bad-coordinates" and notes.count("") == n - 1
    assert [int(v) for v in cols["OBJID"]] == list(ids)


def test_votable_masked_cells_are_bad_coordinates(tmp_path):
    from astropy.table import MaskedColumn, Table

    t = Table({"objid": ["a", "b"], "ra": MaskedColumn([1.0, 2.0], mask=[False, True]),
               "dec": [0.0, 0.0]})
    t.write(tmp_path / "c.vot", format="votable")
    _, notes, ids, _ = rows_of(open_catalog(tmp_path / "c.vot"))
    assert ids == ["a", "b"] and notes == ["", "bad-coordinates"]


def test_example_catalog_is_casjobs_format():
    cat = open_catalog(REPO / "catalogs" / "sdss_dr16.csv")
    assert cat.id_col.lower() == "objid"
    _, notes, ids, ra = rows_of(cat, 100)
    assert len(ids) >= 5 and all(len(i) == 19 and i.isdigit() for i in ids)
    assert notes == [""] * len(ids)
    assert np.isfinite(ra).all()


# -- property-based: whatever the file holds, every row comes out, in order ---------------------

field_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                     max_size=12)
coord_text = st.one_of(field_text, st.floats(allow_nan=True, allow_infinity=True).map(str),
                       st.integers(-1000, 1000).map(str), st.just(""))


@st.composite
def csv_tables(draw):
    extra = draw(st.lists(st.sampled_from(["objID", "z", "note", "Mag r", "id2"]), max_size=3,
                          unique=True))
    header = ["ra", "dec", *extra]
    rows = draw(st.lists(st.tuples(coord_text, coord_text,
                                   *[field_text for _ in extra]).map(list), max_size=25))
    return header, rows


def _write_through(cat, tmp_path: Path) -> list[list[str]]:
    writer = CsvWriter(tmp_path / "out.csv", cat.columns)
    for chunk in cat.chunks(4):
        n = len(chunk)
        writer.write(ResultBlock(chunk.columns, np.full(n, np.nan), np.full(n, -1, np.int8),
                                 np.where(chunk.problems == "", "ok", chunk.problems)))
    writer.commit()
    with open(tmp_path / "out.csv", newline="", encoding="utf-8",
              errors="surrogateescape") as fh:
        return list(csv.reader(fh))[1:]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=csv_tables(), table_line=st.booleans())
def test_any_wellformed_csv_round_trips_row_for_row(tmp_path, table, table_line):
    header, rows = table
    buf = io.StringIO()
    if table_line:
        buf.write("#Table1\n")
    w = csv.writer(buf, lineterminator="\r\n")  # quotes a bare CR in a field, as RFC 4180
    w.writerow(header)
    w.writerows(rows)
    p = tmp_path / "t.csv"
    p.write_bytes(buf.getvalue().encode("utf-8"))
    cat = open_catalog(p)
    cols, notes, _, _ = rows_of(cat)
    got = [list(r) for r in zip(*[cols[c] for c in cat.columns], strict=True)] if rows else []
    assert got == rows  # every field verbatim, every row, in order
    assert len(notes) == len(rows)
    out = _write_through(cat, tmp_path)
    assert [r[: len(header)] for r in out] == rows


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_never_lose_a_row(tmp_path, body):
    p = tmp_path / "t.csv"
    p.write_bytes(b"#Table1\nobjid,ra,dec\n" + body)
    cat = open_catalog(p)
    _, notes, ids, _ = rows_of(cat, 2)
    out = _write_through(cat, tmp_path)
    assert len(out) == len(ids) == len(notes)
    assert all(r[3] in ("", ) for r in out)  # no probabilities were given
    text = body.decode("utf-8", "surrogateescape")
    if '"' not in text and "\x00" not in text and "\r" not in text:
        # without quoting, one row per line that has a comma or any non-space text
        expected = [ln for ln in text.split("\n") if ln.strip() or "," in ln]
        assert len(ids) == len(expected)


# -- VOTable: TABLEDATA rows are streamed, a chunk at a time, exactly as astropy reads them ------

def _astropy_rows(path: Path) -> dict[str, list]:
    """The oracle: astropy's whole-table read, masked cells as None."""
    from astropy.io.votable import parse_single_table

    table = parse_single_table(str(path)).to_table()
    out = {}
    for name in table.colnames:
        col = table[name]
        mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)))
        values = [v.decode() if isinstance(v, bytes) else v for v in np.asarray(col).tolist()]
        out[name] = [None if m else v for v, m in zip(values, np.broadcast_to(mask, len(col)),
                                                      strict=True)]
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def _assert_rows_match(cols: dict[str, list], oracle: dict[str, list], n: int | None = None):
    for name, expected in oracle.items():
        got = [v.item() if isinstance(v, np.generic) else v for v in cols[name]]
        expected = expected if n is None else expected[:n]
        assert len(got) == len(expected), name
        assert all(_same(g, e) for g, e in zip(got, expected, strict=True)), (name, got, expected)


cell_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
maybe_float = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def vo_tables(draw):
    n = draw(st.integers(0, 14))
    ra = draw(st.lists(maybe_float, min_size=n, max_size=n))
    names = draw(st.lists(cell_text, min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=n, max_size=n))
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return ids, ra, names, flags


def _write_votable(path: Path, table_data, fmt: str = "tabledata") -> None:
    from astropy.table import MaskedColumn, Table

    ids, ra, names, flags = table_data
    t = Table({
        "objID": np.array(ids, dtype=np.int64),
        "ra": MaskedColumn([0.0 if v is None else v for v in ra], dtype=np.float64,
                           mask=[v is None for v in ra]),
        "dec": np.linspace(-10, 10, len(ids)),
        "name": np.array(names, dtype=str) if names else np.array([], dtype="U1"),
        "flag": np.array(flags, dtype=bool),
    })
    t.write(path, format="votable", tabledata_format=fmt, overwrite=True)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=vo_tables(), chunk=st.integers(1, 5))
def test_votable_rows_stream_in_chunks_exactly_as_astropy_reads_them(tmp_path, table, chunk):
    p = tmp_path / "t.vot"
    _write_votable(p, table)
    cat = open_catalog(p)
    assert (cat.ra_col, cat.dec_col, cat.id_col) == ("ra", "dec", "objID")
    assert cat.estimated_rows() == len(table[0])
    cols, notes, ids, _ = rows_of(cat, chunk)
    _assert_rows_match(cols, _astropy_rows(p))
    assert ids == [str(i) for i in table[0]]  # 64-bit ids exact
    assert notes == ["" if v is not None and np.isfinite(v) and 0 <= v <= 360
                     else "bad-coordinates" for v in table[1]]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(table=vo_tables(), cut=st.floats(0, 1))
def test_truncated_votable_is_a_one_line_error_after_an_exact_prefix(tmp_path, table, cut):
    """A VOTable cut short anywhere: every row read is the file's own, in order, and the rest is
    a one-line GalmergeError -- never another exception, never a wrong or invented row."""
    p = tmp_path / "t.vot"
    _write_votable(p, table)
    oracle = _astropy_rows(p)
    blob = p.read_bytes()
    p.write_bytes(blob[: int(len(blob) * cut)])
    cols: dict[str, list] = {}
    try:
        cat = open_catalog(p)
        for c in cat.chunks(2):
            for name in cat.columns:
                cols.setdefault(name, []).extend(c.columns[name])
    except GalmergeError as exc:
        assert "\n" not in str(exc)
    n = len(next(iter(cols.values()), []))
    assert n <= len(table[0])
    if n:
        _assert_rows_match(cols, oracle, n)


def test_votable_with_prefixes_comments_cdata_and_more_tables(tmp_path):
    p = tmp_path / "hand.xml"
    p.write_text("""<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE VOTABLE [ <!ENTITY who "M&#252;ller"> ]>
<vot:VOTABLE version="1.3" xmlns:vot="http://www.ivoa.net/xml/VOTable/v1.3">
 <vot:RESOURCE>
  <vot:INFO name="QUERY_STATUS" value="OK"/>
  <vot:TABLE nrows="4">
   <vot:FIELD name="objid" datatype="long"><vot:VALUES null="-1"/></vot:FIELD>
   <vot:FIELD name="RAJ2000" datatype="double" unit="deg"/>
   <vot:FIELD name="DEJ2000" datatype="double" unit="deg"/>
   <vot:FIELD name="note" datatype="char" arraysize="*"/>
   <vot:DATA><vot:TABLEDATA>
    <vot:TR><vot:TD>1237648720693755918</vot:TD><vot:TD>229.5</vot:TD><vot:TD>-0.8</vot:TD>
     <vot:TD><![CDATA[a </vot:TR> in <CDATA>]]></vot:TD></vot:TR>
    <!-- a comment between rows: <vot:TR><vot:TD>9</vot:TD></vot:TR> -->
    <vot:TR><vot:TD>-1</vot:TD><vot:TD></vot:TD><vot:TD>2</vot:TD><vot:TD>&who; &amp; co</vot:TD>
    </vot:TR><vot:TR><vot:TD>3</vot:TD><!-- inside --><vot:TD>10</vot:TD><vot:TD>20</vot:TD>
     <vot:TD/></vot:TR>
    <vot:TR/>
   </vot:TABLEDATA></vot:DATA>
   <vot:INFO name="after" value="data"/>
  </vot:TABLE>
  <vot:TABLE><vot:FIELD name="x" datatype="int"/><vot:DATA><vot:TABLEDATA>
   <vot:TR><vot:TD>7</vot:TD></vot:TR></vot:TABLEDATA></vot:DATA></vot:TABLE>
 </vot:RESOURCE>
</vot:VOTABLE>
""")
    cat = open_catalog(p)
    assert (cat.ra_col, cat.dec_col, cat.id_col) == ("RAJ2000", "DEJ2000", "objid")
    assert cat.estimated_rows() == 4
    for chunk in (1, 3, 100):
        cols, notes, ids, ra = rows_of(cat, chunk)
        assert cols["note"][:3] == ["a </vot:TR> in <CDATA>", "Müller & co", ""]
        assert ids == ["1237648720693755918", "", "3", ""]  # the null id is empty, not -1
        np.testing.assert_array_equal(ra, [229.5, np.nan, 10.0, np.nan])
        # astropy refuses the whole file for the empty row (E21); here only that row is bad
        assert notes[:3] == ["", "bad-coordinates", ""]
        assert notes[3].startswith("bad-row: ") and "E21" in notes[3]
    with pytest.raises(Exception, match="E21"):
        _astropy_rows(p)


@pytest.mark.parametrize("fmt", ["binary", "binary2"])
def test_binary_votables_are_read_whole(tmp_path, fmt):
    p = tmp_path / "b.vot"
    table = ([1, 2, 3], [10.0, None, 30.0], ["a", "b", "c"], [True, False, True])
    _write_votable(p, table, fmt)
    cols, notes, ids, _ = rows_of(open_catalog(p), 2)
    _assert_rows_match(cols, _astropy_rows(p))
    assert ids == ["1", "2", "3"] and notes == ["", "bad-coordinates", ""]


def test_broken_votable_is_a_one_line_error(tmp_path):
    p = tmp_path / "bad.vot"
    p.write_text('<?xml version="1.0"?><VOTABLE><RESOURCE><TABLE><FIELD name="ra" ')
    with pytest.raises(GalmergeError, match="cannot read as VOTable"):
        open_catalog(p)


def _objid_votable(path: Path, objids: list[str], encoding: str = "utf-8") -> Path:
    rows = "".join(f"<TR><TD>{i}</TD><TD>150.1</TD><TD>2.2</TD></TR>\n" for i in objids)
    path.write_text(
        f'<?xml version="1.0" encoding="{encoding}"?>\n<VOTABLE version="1.4"><RESOURCE><TABLE>'
        '<FIELD name="objid" datatype="long"/><FIELD name="ra" datatype="double"/>'
        '<FIELD name="dec" datatype="char" arraysize="*"/>'
        f"<DATA><TABLEDATA>\n{rows}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>\n",
        encoding=encoding)
    return path


@pytest.mark.parametrize("chunk", [1, 3])
def test_votable_objid_beyond_64_bits_is_a_bad_row_not_a_clamped_id(tmp_path, chunk):
    # astropy clamps it to 2**63 - 1 with only a warning: that would be another galaxy's id
    p = _objid_votable(tmp_path / "ids.vot",
                       ["1237648720693755918", "9223372036854775808", "-9223372036854775809", "7"])
    _, notes, ids, ra = rows_of(open_catalog(p), chunk)
    assert ids[0] == "1237648720693755918" and ids[3] == "7"
    assert notes[0] == notes[3] == ""
    for k in (1, 2):
        assert notes[k].startswith("bad-row: W51") and "out of range" in notes[k]
        assert ids[k] != "9223372036854775807" and np.isnan(ra[k])


def test_votable_read_whole_refuses_a_clamped_objid(tmp_path):
    # UTF-16 goes to astropy's whole-file reader (no byte offsets): it cannot mark one row
    p = _objid_votable(tmp_path / "ids.vot", ["5", "9223372036854775808"], encoding="utf-16")
    with pytest.raises(GalmergeError, match="out of range for a 64-bit integer") as info:
        open_catalog(p)
    assert "\n" not in str(info.value)


td_text = st.one_of(st.just(""), st.sampled_from(["1", "-5", "2.5", "nan", "inf", "T", "?", "1e400",
                                                 "9223372036854775808", " 7 "]), cell_text)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.lists(td_text, max_size=6), max_size=12), chunk=st.integers(1, 4))
def test_malformed_votable_rows_never_crash_and_never_lose_a_row(tmp_path, rows, chunk):
    """Any TD text, any number of TDs per TR: one catalog row per TR, in order."""
    from xml.sax.saxutils import escape

    body = "".join("<TR>" + "".join(f"<TD>{escape(v)}</TD>" for v in r) + "</TR>\n"
                   for r in rows)
    p = tmp_path / "m.vot"
    p.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<VOTABLE version="1.4"><RESOURCE><TABLE>'
        '<FIELD name="objid" datatype="long"/><FIELD name="ra" datatype="double"/>'
        '<FIELD name="dec" datatype="float"/><FIELD name="ok" datatype="boolean"/>'
        f"<DATA><TABLEDATA>\n{body}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>\n",
        encoding="utf-8")
    cat = open_catalog(p)
    cols, notes, ids, ra = rows_of(cat, chunk)
    assert len(notes) == len(ids) == len(ra) == len(rows)
    assert all(n in ("", "bad-coordinates") or n.startswith("bad-row: ") for n in notes)
    for r, note, i in zip(rows, notes, ids, strict=True):
        if len(r) != 4:
            assert note.startswith("bad-row: ")  # astropy wants every cell
        elif not note.startswith("bad-row") and r[0].strip().lstrip("-").isdigit():
            assert i == str(int(r[0]))  # ids exact
    out = _write_through(cat, tmp_path)
    assert len(out) == len(rows)


# -- HDF5/FITS outputs of typed inputs: nulls, changing chunk types, unsigned 64-bit ids -----------

def _nullable_votable(path: Path, null_rows: set[int], n: int = 8) -> Path:
    rows = "".join(
        f"<TR><TD>{1237648720693755918 + i}</TD><TD>{150 + i * 0.01}</TD><TD>2.0</TD>"
        f"<TD>{'' if i in null_rows else i * 10}</TD><TD>{'' if i in null_rows else i / 4}</TD>"
        f"<TD>{'' if i in null_rows else ('T' if i % 2 else 'F')}</TD></TR>\n"
        for i in range(n))
    path.write_text(
        '<?xml version="1.0"?>\n<VOTABLE version="1.3"><RESOURCE><TABLE>'
        '<FIELD name="objid" datatype="long"/><FIELD name="ra" datatype="double"/>'
        '<FIELD name="dec" datatype="double"/><FIELD name="nspec" datatype="int"/>'
        '<FIELD name="z" datatype="float"/><FIELD name="clean" datatype="boolean"/>'
        f"<DATA><TABLEDATA>\n{rows}</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>\n")
    return path


def _write_all(cat, out: Path, chunk: int = 4) -> None:
    from galmerge.classification.outputs import open_writer

    writer = open_writer(out, cat.columns)
    for part in cat.chunks(chunk):
        n = len(part)
        writer.write(ResultBlock(part.columns, np.full(n, 0.25), np.zeros(n, np.int8),
                                 np.array(["ok"] * n, dtype=object)))
    writer.commit()


@pytest.mark.parametrize("null_rows", [{5}, {1}, {0, 1, 2, 3}, set()])
@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_typed_columns_with_nulls_in_some_chunks_keep_numbers_and_gaps(tmp_path, null_rows,
                                                                       suffix):
    """A VOTable int column is int32 in chunks without a null and object (None) in chunks with
    one; HDF5 and FITS outputs used to fail at the end of a classify run on such input."""
    from astropy.table import Table

    cat = open_catalog(_nullable_votable(tmp_path / "cat.vot", null_rows))
    out = tmp_path / f"out{suffix}"
    _write_all(cat, out)
    if suffix == ".h5":
        with h5py.File(out, "r") as f:
            names = json.loads(f.attrs["datasets"])
            nspec, z, clean = (f[names[3]], f[names[4]], f[names[5]])
            assert nspec.dtype.kind == "i" and z.dtype.kind == "f"
            null = nspec.attrs.get("null")
            got = [None if v == null else int(v) for v in nspec[:]]
            zs = [None if np.isnan(v) else float(v) for v in z[:]]
            flags = [None if v == clean.attrs.get("null") else int(v) for v in clean[:]]
            ids = f[names[0]][:].tolist()
    else:
        t = Table.read(out)
        got = [None if np.ma.is_masked(v) else int(v) for v in t["nspec"]]
        zs = [None if np.ma.is_masked(v) or np.isnan(v) else float(v) for v in t["z"]]
        flags = [None if np.ma.is_masked(v) else int(v) for v in t["clean"]]
        ids = [int(v) for v in t["objid"]]
    assert got == [None if i in null_rows else i * 10 for i in range(8)]
    assert zs == [None if i in null_rows else i / 4 for i in range(8)]
    assert flags == [None if i in null_rows else i % 2 for i in range(8)]
    assert ids == [1237648720693755918 + i for i in range(8)]


def test_unsigned_64_bit_ids_survive_fits_output(tmp_path):
    from astropy.table import Table

    from galmerge.classification.outputs import open_writer

    ids = np.array([2**63 + 5, 12345, 2**64 - 2], dtype=np.uint64)
    writer = open_writer(tmp_path / "out.fits", ["id"])
    writer.write(ResultBlock({"id": ids}, np.array([0.2, 0.9, 0.5]), np.array([0, 1, 0], np.int8),
                             np.array(["ok"] * 3, dtype=object)))
    writer.commit()
    assert [int(v) for v in Table.read(tmp_path / "out.fits")["id"]] == ids.tolist()


def test_a_later_chunk_that_cannot_fit_the_first_is_a_one_line_error(tmp_path):
    from galmerge.classification.outputs import open_writer

    writer = open_writer(tmp_path / "out.h5", ["x"])
    block = ResultBlock({"x": np.array([1, 2], np.int32)}, np.array([0.1, 0.2]),
                        np.array([0, 0], np.int8), np.array(["ok", "ok"], dtype=object))
    writer.write(block)
    block.columns["x"] = np.array(["a", None], dtype=object)
    with pytest.raises(GalmergeError, match=r"write the output as \.csv") as info:
        writer.write(block)
    writer.abort()
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out.h5").exists()


def test_votable_stream_href_is_refused_and_never_fetched(tmp_path):
    """astropy would fetch a <STREAM href> (any scheme, no timeout) while reading: the catalog
    is refused in one line and the loopback server sees no request."""
    import re
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = tmp_path / "b.vot"
        _write_votable(p, ([1, 2], [10.0, 20.0], ["a", "b"], [True, False]), "binary")
        inline = p.read_text()
        for href in (f"http://127.0.0.1:{server.server_port}/rows", f"file://{p}"):
            p.write_text(re.sub(r"<STREAM[^>]*>[^<]*</STREAM>", f'<STREAM href="{href}"/>',
                                inline))
            with pytest.raises(GalmergeError, match="outside the file") as err:
                open_catalog(p)
            assert "\n" not in str(err.value)
    finally:
        server.shutdown()
    assert asked == []
