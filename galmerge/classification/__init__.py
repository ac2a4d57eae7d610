"""`galmerge classify`: a catalog or image file in, one probability per object out.

- ``pipeline``: ``classify()``, the run from catalog to output file.
- ``catalogs``: input catalogs read in chunks (CSV, FITS, VOTable, Parquet).
- ``outputs``: result writers (CSV, HDF5, FITS, Parquet) and resume.
- ``segments``: the resume segments of an interrupted run.
- ``cutout_cache``: the HDF5 cache of cutouts fetched from a survey service.
- ``parquet``: Parquet catalogs and outputs.
- ``hats``: HATS catalogs classified partition by partition on Dask.
- ``ensemble``: ``--model RUN_A --model RUN_B``, several models as one.

May import: ``fractions``, ``models``, ``data``, ``io``, ``runtime``, ``plugin``, ``errors``;
never training, evaluation or surveys (a survey comes through its plugin record).
"""
