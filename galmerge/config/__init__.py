"""What a run is: its configuration, presets and run directory.

- ``resolve``: defaults -> preset -> ``--config FILE.toml`` -> CLI flags, the resolved config.
- ``presets``: the named presets (paper methods, cited values).
- ``legacy``: the values of settings older run records lack, as their runs trained.
- ``rundir``: the run directory (config.toml, env.json, metrics.csv, summary.json, checkpoints).

May import: ``galmerge.plugin``, ``galmerge.io``, ``galmerge.errors``.
"""
