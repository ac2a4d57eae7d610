"""What ``last.pt`` saves to resume a run: the typed training state and the RNG snapshot.

``TrainingState`` holds the run's own progress (where it is, the metrics rows, the best epoch and
early-stopping counters, the epoch's running loss sums, throughput totals). ``to_dict`` adds the
state dicts of the components (optimiser, scheduler, strategy modules, batch streams, RNGs) and
writes the whole as last.pt's ``training_state``. Under torchrun its ``rng`` is rank 0's snapshot
and ``rng_ranks`` every rank's, in rank order (each rank resumes its own random stream). Derived
counters are computed, never stored twice: ``global_step`` is written for readers but rebuilt
from ``epoch``/``step_in_epoch`` on load, the number of accumulated steps is ``step_in_epoch``,
and "stopped early" is ``best.stopped``. Files written before this layout (``_steps``
accumulator, ``best`` without the stop keys, no ``rng_ranks``) load unchanged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Best:
    """Model selection (``select_by``) and early stopping (``stop_by``) progress."""

    value: float = math.nan  # best select_by value so far; best.pt holds its weights
    epoch: int = 0  # the epoch of best.pt (0 = none yet)
    stop_value: float = math.nan  # best stop_by value so far
    bad_epochs: int = 0  # "patience": epochs since stop_value last improved
    counter: float = 0.0  # "deepmerge": the graded counter
    stopped: bool = False  # early stopping fired

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value, "epoch": self.epoch, "bad_epochs": self.bad_epochs,
            "stopped": self.stopped, "stop_value": self.stop_value, "counter": self.counter,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Best:
        value = float(d.get("value", math.nan))
        return cls(
            value=value,
            epoch=int(d.get("epoch", 0)),
            # written before stop_by existed: stopping followed select_by
            stop_value=float(d.get("stop_value", value)),
            bad_epochs=int(d.get("bad_epochs", 0)),
            counter=float(d.get("counter", 0.0)),
            stopped=bool(d.get("stopped", False)),
        )


@dataclass
class TrainingState:
    """A run's progress; with the component states it is last.pt's ``training_state``."""

    epoch: int = 1  # the epoch running or to run next (1-based)
    step_in_epoch: int = 0  # steps of ``epoch`` already taken
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv so far
    best: Best = field(default_factory=Best)
    # running sums of this epoch's loss terms and diagnostics (device tensors)
    accumulators: dict[str, torch.Tensor] = field(default_factory=dict)
    train_seconds: float = 0.0  # over the whole run, resumed sessions included
    train_images: int = 0

    def global_step(self, steps_per_epoch: int) -> int:
        return (self.epoch - 1) * steps_per_epoch + self.step_in_epoch

    def to_dict(self, steps_per_epoch: int, components: Mapping[str, Any]) -> dict[str, Any]:
        """last.pt's ``training_state``: this state, ``components``' state dicts, the RNGs."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step(steps_per_epoch),  # derived; for readers only
            **dict(components),
            "best": self.best.to_dict(),
            "rows": [dict(r) for r in self.rows],
            "accumulators": {k: v.detach().cpu() for k, v in self.accumulators.items()},
            "train_seconds": self.train_seconds,
            "train_images": self.train_images,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], device: torch.device) -> TrainingState:
        acc = {k: v.to(device) for k, v in d["accumulators"].items() if k != "_steps"}
        return cls(
            epoch=int(d["epoch"]),
            step_in_epoch=int(d["step_in_epoch"]),
            rows=[dict(r) for r in d["rows"]],
            best=Best.from_dict(d["best"]),
            accumulators=acc,
            train_seconds=float(d.get("train_seconds", 0.0)),
            train_images=int(d.get("train_images", 0)),
        )


# RNG snapshots (weights_only-loadable: tensors, lists, primitives)


def rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of process ``rank`` (> 0) of a multi-process run: its own random stream
    (dropout masks), drawn from (seed, rank). Rank 0 keeps ``seed``'s stream, so a
    single-process run draws as it always has."""
    return int(np.random.SeedSequence([seed % 2**64, rank]).generate_state(1, np.uint64)[0])


def seed_rank(seed: int, rank: int) -> None:
    """Re-seed torch's generators (CPU and every GPU) for a non-main rank; rank 0 is left as it
    is."""
    if rank > 0:
        torch.manual_seed(rank_seed(seed, rank))
