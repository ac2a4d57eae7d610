"""`galmerge classify`: a catalog or image file in, one probability per object out.

- ``pipeline``: ``classify()``, the run from catalog to output file: chunks, inference, summary.
- ``inputs``: where rows and stamps come from (HDF5 image files, catalogs' positions through the
  cutout cache and the survey's service; a plugin's bug fails the run, a network failure is a
  row status).
- ``sharding``: runs shared by processes under torchrun: heartbeats, rank 0's wait and merge.
- ``catalogs``: input catalogs read in chunks (CSV, FITS, VOTable, Parquet).
- ``outputs``: result writers (CSV, HDF5, FITS, Parquet) and resume.
- ``segments``: the resume segments of an interrupted run.
- ``cutout_cache``: the HDF5 cache of cutouts fetched from a survey service.
- ``parquet``: Parquet catalogs and outputs.
- ``hats``: HATS catalogs classified partition by partition on Dask.
- ``ensemble``: ``--model RUN_A --model RUN_B``, several models as one.
- ``predict``: ``galmerge.predict``, stamps held in memory classified by the same code, into an
  astropy Table.

May import: ``fractions``, ``models``, ``data``, ``io``, ``runtime``, ``plugin``, ``errors``;
never training, evaluation or surveys (a survey comes through its plugin record).
"""
