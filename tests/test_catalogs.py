"""Catalog reading: SkyServer/CasJobs CSV, FITS, VOTable; malformed input never loses a row."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galmerge.catalogs import open_catalog
from galmerge.errors import GalmergeError
from galmerge.outputs import CsvWriter, ResultBlock

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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
