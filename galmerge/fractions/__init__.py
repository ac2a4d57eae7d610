"""`galmerge fraction` and ``classify --prior``: merger fractions under label shift.

- ``estimators``: label-shift estimators of a survey's merger fraction (with intervals).
- ``report``: the fraction of a classified survey, from its output file.
- ``validation_stats``: a run's source validation predictions, cached in the run directory.
- ``prior``: p_merger rescaled to a new class prior.

May import: ``evaluation``, ``config``, ``data``, ``models``, ``io``, ``runtime``, ``errors``;
never classification, training or surveys.
"""
