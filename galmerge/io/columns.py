"""The catalog column names galmerge recognises for coordinates and identifiers (lower case,
best first): classify's catalog readers pick RA/Dec/id columns by them, `fraction --labels` its
identifier column."""

#: accepted column names, lower case, best first
RA_NAMES = ("ra", "ra_deg", "radeg", "raj2000", "_raj2000", "ra_j2000", "ra2000", "ra_icrs",
            "ramean", "ra_obj", "alpha")
DEC_NAMES = ("dec", "dec_deg", "decdeg", "dej2000", "_dej2000", "decj2000", "dec_j2000",
             "dec2000", "de_icrs", "dec_icrs", "decmean", "dec_obj", "delta", "de")
ID_NAMES = ("objid", "obj_id", "specobjid", "dr7objid", "bestobjid", "id", "object_id",
            "objectid", "source_id", "sourceid", "name", "galaxy_id")
