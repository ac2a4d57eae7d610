"""The catalog column names galmerge recognises for coordinates and identifiers (lower case,
best first): classify's catalog readers pick RA/Dec/id columns by them, `fraction --labels` its
identifier column. `find_column` looks a name up in a table's columns."""

from __future__ import annotations

from collections.abc import Sequence

#: accepted column names, lower case, best first
RA_NAMES = ("ra", "ra_deg", "radeg", "raj2000", "_raj2000", "ra_j2000", "ra2000", "ra_icrs",
            "ramean", "ra_obj", "alpha")
DEC_NAMES = ("dec", "dec_deg", "decdeg", "dej2000", "_dej2000", "decj2000", "dec_j2000",
             "dec2000", "de_icrs", "dec_icrs", "decmean", "dec_obj", "delta", "de")
ID_NAMES = ("objid", "obj_id", "specobjid", "dr7objid", "bestobjid", "id", "object_id",
            "objectid", "source_id", "sourceid", "name", "galaxy_id")


def find_column(columns: Sequence[str], name: str) -> str | None:
    """``name`` as the table spells it: the exact column, else the one equal to it in lower
    case (the last such, where several are); None if there is none."""
    if name in columns:
        return name
    return {c.lower(): c for c in columns}.get(name.lower())
