"""Tiny components for trainer tests: a small backbone, a small strategy, toy image sets.

Used in-process by tests/test_train*.py and by the helper scripts those tests run in
subprocesses (resume after SIGKILL, torchrun), which register them the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from galmerge import hookimpl
from galmerge.plugin.imageset import ImageSet
from galmerge.plugin.records import Backbone, Strategy, Survey


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, image_size: int, width: int = 4, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(dropout)  # uses the RNG: resume must restore it
        self.out_features = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class MeanGap(nn.Module):
    """Squared distance between source and target feature means, times a learnable scale."""

    def __init__(self, feature_dim: int, power: float, nan_at: int = -1) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.power = power
        self.nan_at = nan_at  # step at which the term turns NaN (tests of the NaN guard)
        self.calls = 0

    def forward(self, step: Any) -> dict[str, torch.Tensor]:
        self.calls += 1
        gap = (step.source_features.mean(0) - step.target_features.mean(0)).pow(2).sum()
        term = self.scale.abs().pow(self.power) * gap
        if 0 <= self.nan_at < self.calls:
            term = term * float("nan")
        return {"meangap": term, "_gap": gap}


class ToyPlugin:
    @hookimpl
    def register_backbones(self):
        return [
            Backbone(
                name="tiny",
                description="test backbone",
                build=lambda c, s, **o: TinyNet(c, s, **o),
                defaults={"width": 4, "dropout": 0.1},
            )
        ]

    @hookimpl
    def register_surveys(self):
        def load(arg: str | None, options: Mapping[str, Any]) -> ImageSet:
            pair = toy_sets(
                n_source=int(options.get("n", 60)),
                n_target=int(options.get("n", 60)),
                channels=int(options.get("channels", 2)),
                size=int(options.get("size", 8)),
            )
            return pair[0] if arg == "source" else pair[1]

        return [Survey(name="toy", description="toy survey", load=load)]

    @hookimpl
    def register_strategies(self):
        def build(context, options: Mapping[str, Any]) -> nn.Module:
            return MeanGap(context.feature_dim, float(options["power"]), int(options["nan_at"]))

        def build_none(context, options):
            return _NoTerms()

        return [
            Strategy(
                name="meangap",
                description="test strategy",
                build=build,
                defaults={"weight": 1.0, "power": 1.0, "nan_at": -1},
                aliases=("mg",),
            ),
            Strategy(name="none", description="source only", build=build_none),
        ]


class _NoTerms(nn.Module):
    def forward(self, step: Any) -> dict[str, torch.Tensor]:
        return {}


def register(plugin_manager: Any = None, with_none: bool = True) -> None:
    """Register the toy plugin on the process plugin manager (for subprocess scripts)."""
    from galmerge.plugin.manager import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    has_none = "none" in _names(pm)
    pm.register(ToyPlugin() if with_none and not has_none else _NoNone(), name="toys")


def _names(pm: Any) -> set[str]:
    try:
        return set(pm.components("strategies"))
    except Exception:
        return set()


class _NoNone(ToyPlugin):
    @hookimpl
    def register_strategies(self):
        return [r for r in ToyPlugin.register_strategies(self) if r.name != "none"]


def toy_sets(
    n_source: int = 60, n_target: int = 60, channels: int = 2, size: int = 8, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Mergers carry a bright blob; the target is dimmer, offset and noisier (a domain shift)."""
    rng = np.random.default_rng(seed)

    def make(n: int, gain: float, offset: float, noise: float, name: str) -> ImageSet:
        labels = rng.integers(0, 2, n)
        x = rng.normal(0, noise, (n, channels, size, size)).astype(np.float32)
        x[labels == 1, :, 2:5, 2:5] += gain
        x += offset
        return ImageSet(
            images=torch.from_numpy(x),
            labels=torch.from_numpy(labels),
            ids=np.arange(n),
            bands=tuple("gri"[:channels]) if channels <= 3 else tuple(map(str, range(channels))),
            survey=name,
        )

    return make(n_source, 2.0, 0.0, 0.5, "toy-source"), make(n_target, 1.2, 0.5, 0.8, "toy-target")


if __name__ == "__main__":  # pragma: no cover - used by subprocess tests
    # usage: python train_toys.py RUN_DIR EPOCHS [--resume] [--checkpoint-every N] [--nodrop]
    #        [--slow] [--record-rng FOLDER] [--exit-after-save N] [--hold FOLDER]
    import galmerge

    register()
    run_dir, epochs = sys.argv[1], int(sys.argv[2])
    extra = sys.argv[3:]
    source, target = toy_sets()
    kwargs: dict[str, Any] = dict(quiet=True)
    if "--resume" in extra:
        kwargs["resume"] = run_dir
    else:
        kwargs.update(
            strategy="meangap", backbone="tiny", epochs=epochs, batch_size=8, seed=3,
            run_dir=run_dir, patience=0, device="cpu",
        )
        if "--nodrop" in extra:  # dropout masks differ per process under DDP
            kwargs["backbone_options"] = {"dropout": 0.0}
        if "--checkpoint-every" in extra:
            kwargs["checkpoint_every"] = int(extra[extra.index("--checkpoint-every") + 1])
        if "--slow" in extra:
            import time

            import galmerge.data.batches as b

            original = b.TensorBatches.next

            def slow_next(self):  # give the parent time to kill us mid-epoch
                time.sleep(0.05)
                return original(self)

            b.TensorBatches.next = slow_next
    if "--record-rng" in extra:  # each rank's torch RNG state at every training dropout
        import hashlib
        import os

        folder = extra[extra.index("--record-rng") + 1]
        dropout = nn.Dropout.forward

        def recording(self, x):
            if self.training:
                digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
                with open(f"{folder}/rank{os.environ.get('RANK', '0')}.txt", "a") as fh:
                    fh.write(digest + "\n")
            return dropout(self, x)

        nn.Dropout.forward = recording
    if "--exit-after-save" in extra:  # every rank dies after the Nth last.pt (a kill there)
        import os

        from galmerge.training.trainer import Trainer

        save_last, saves = Trainer.save_last, [int(extra[extra.index("--exit-after-save") + 1])]

        def save_then_exit(self):
            save_last(self)
            saves[0] -= 1
            if saves[0] == 0:
                from galmerge.runtime import distributed as ddp

                ddp.barrier(self.plan.dist)  # rank 0 has written it
                os._exit(3)

        Trainer.save_last = save_then_exit
    if "--hold" in extra:  # epoch n starts once FOLDER/go-n exists (FOLDER/at-n: waiting)
        import time
        from pathlib import Path

        from galmerge.training.trainer import Trainer

        hold, run_epoch, epoch = Path(extra[extra.index("--hold") + 1]), Trainer.run_epoch, [0]

        def held(self, progress):
            epoch[0] += 1
            (hold / f"at-{epoch[0]}").touch()
            while not (hold / f"go-{epoch[0]}").exists():
                time.sleep(0.02)
            return run_epoch(self, progress)

        Trainer.run_epoch = held
    summary = galmerge.train(source=source, target=target, **kwargs)
    print("SUMMARY", summary["metrics"]["source_test"]["accuracy"])
