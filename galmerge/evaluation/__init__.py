"""`galmerge evaluate`, `compare` and `preview`: metrics, plots and reports of runs.

- ``pipeline``: ``evaluate(run_dir)``, metrics and plots for a run directory.
- ``plots``, ``gradcam``, ``report``: figures, Grad-CAM maps, the HTML report.
- ``comparison``: the paper-style table over run directories.
- ``preview``: PNG grids of a labelled image set.

May import: ``config``, ``data``, ``models``, ``scores``, ``io``, ``runtime``, ``plugin``,
``errors``; never training, classification or surveys.
"""
