"""The trainer behind `galmerge train` and `galmerge.train(...)`.

- ``api``: ``train()``: settings -> resolved config (new run or ``--resume``) -> run.
- ``plan``: the ``Plan`` resolved once (sizes, steps per epoch, rules, run directory).
- ``data``: the two domains (splits, preprocessing, device tensors) and their batch streams.
- ``step``: ``TrainStep``, the forward pass and loss of one step (model + strategy modules).
- ``optim``: Adam parameter groups from learning-rate multipliers; one-cycle and cyclic schedules.
- ``trainer``: ``Trainer``: one step, one epoch, the run, checkpoints, the summary.
- ``state``: ``TrainingState``, exactly what last.pt's ``training_state`` holds.
- ``stopping``: best checkpoint (``select_by``) and early stopping (``stop_by``, rule).
- ``evaluate``: validation rows and test metrics through ``galmerge.models.inference``.
- ``checkpoints``: best.pt/last.pt payloads; ``init_from``.
"""

from galmerge.training.api import train

__all__ = ["train"]
