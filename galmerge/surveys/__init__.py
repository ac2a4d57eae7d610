"""The built-in surveys, each beside its plugin module (``<name>/plugin.py``).

- ``hdf5/``: any labelled HDF5 image set (``hdf5:PATH``).
- ``synthetic/``: rendered merging/non-merging galaxies (``render/``, the renderer).
- ``deepmerge/``: the DeepMerge II data (Illustris + SDSS sets), its download and
  ``galmerge reproduce``.
- ``sdss/``: SDSS frame and JPEG cutouts for classification.

May import anything below the commands; the core never imports this package (it reaches a
survey only through the plugin manager). A plugin here is registered exactly as a third-party
one, listed in ``galmerge.plugin.manager.BUILTIN_PLUGINS``.
"""
