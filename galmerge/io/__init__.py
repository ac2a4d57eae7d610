"""Shared input/output helpers, used by every job.

- ``atomic``: write-temp-then-rename writes, exclusive locks.
- ``columns``: the catalog column names recognised for RA, Dec and identifiers.
- ``http``: the retrying HTTP client (``RetryingClient``, ``RetryPolicy``, ``bounded_map``).
- ``hdf5``: the one HDF5 reader/writer for image sets (the DESIGN.md schema).
- ``paths``: ``data_dir()``, the one reader of ``$GALMERGE_DATA``.
- ``provenance``: the provenance record stamped into outputs and exports.

May import: ``galmerge.errors``, ``galmerge.plugin``, ``galmerge.runtime``.
"""
