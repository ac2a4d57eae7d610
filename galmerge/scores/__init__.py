"""Numbers computed from predictions, below both training and evaluation.

- ``metrics``: binary classification metrics (merger = positive class).
- ``selection``: label-free model-selection scores on validation splits (``select_by``).
- ``calibration``: temperature scaling on the source validation split, ECE.
- ``collapse``: notice a collapsed training run and say so in one line.

May import: nothing of galmerge (numpy/torch/scikit-learn only); never training or evaluation.
"""
