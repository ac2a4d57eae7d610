"""The plan of a run, resolved once from the config: sizes, steps, rules, where things go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from galmerge.runtime import distributed as ddp


def nonfinite_check_interval(device: torch.device) -> int:
    """Steps between checks that the loss is finite: every step on the CPU; on accelerators
    every 25 (each check waits for the device), and always before a checkpoint is written."""
    return 1 if device.type == "cpu" else 25


@dataclass(frozen=True)
class Plan:
    """Everything fixed for a run (``config`` is the resolved config, as config.toml)."""

    config: dict[str, Any]
    out_dir: Path
    device: torch.device
    dist: ddp.DistInfo
    steps_per_epoch: int
    needs_target: bool  # False: source-only training, target batches are never drawn
    check_every: int  # steps between non-finite-loss checks

    @property
    def epochs(self) -> int:
        return int(self.config["epochs"])

    @property
    def batch(self) -> int:
        return int(self.config["batch_size"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def joint_batchnorm(self) -> bool:
        return self.config.get("domain_batchnorm", "joint") == "joint"

    @property
    def select_by(self) -> str:
        return str(self.config["select_by"])

    @property
    def stop_by(self) -> str:
        return str(self.config.get("stop_by") or self.config["select_by"])

    @property
    def early_stopping(self) -> str:
        return str(self.config.get("early_stopping", "patience"))

    @property
    def patience(self) -> int:
        return int(self.config["patience"])

    @property
    def checkpoint_every(self) -> int:
        return int(self.config["checkpoint_every"])

    @property
    def images_per_step(self) -> int:
        """Images forwarded per step (all ranks): the source batch, plus the target batch."""
        return self.batch * (2 if self.needs_target else 1)


def make_plan(
    config: dict[str, Any], out_dir: Path, device: torch.device, dist: ddp.DistInfo,
    n_source_train: int, needs_target: bool,
) -> Plan:
    batch = int(config["batch_size"])
    if config.get("epoch_steps") == "ceil":  # a DataLoader without drop_last (DeepMerge II)
        steps_per_epoch = max(1, -(-n_source_train // batch))
    else:
        steps_per_epoch = max(1, n_source_train // batch)
    if config["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(config["max_steps_per_epoch"]))
    check = nonfinite_check_interval(device)
    return Plan(config, out_dir, device, dist, steps_per_epoch, needs_target, check)
