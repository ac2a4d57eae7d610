"""best.pt / last.pt payloads and ``init_from`` (transfer learning from an earlier run)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from galmerge.errors import GalmergeError
from galmerge.models.model import GalaxyClassifier


def payload(
    config: Mapping[str, Any], model: GalaxyClassifier, strategies: nn.Module,
    preprocess: dict[str, Any], shape: tuple[int, int], epoch: int,
    training_state: dict[str, Any] | None,
) -> dict[str, Any]:
    """A checkpoint (see ``galmerge.models.model``); ``strategy_state`` holds the strategy modules'
    weights (a DANN discriminator, Fisher centres) for ``init_from``; ``shape`` is
    (in_channels, image_size)."""
    from galmerge import __version__

    return {
        "galmerge_version": __version__,
        "backbone": config["backbone"],
        "backbone_options": dict(config["backbone_options"]),
        "in_channels": shape[0],
        "image_size": shape[1],
        "num_classes": 2,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "strategy_state": {k: v.detach().cpu() for k, v in strategies.state_dict().items()},
        "temperature": 1.0,
        "preprocess": preprocess,
        "config": config,
        "epoch": epoch,
        "training_state": training_state,
    }


def load_init_weights(model: GalaxyClassifier, init: Mapping[str, Any], source: str) -> None:
    try:
        model.load_state_dict(init["model"])
    except RuntimeError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "size mismatch" in line
             or "Missing key" in line or "Unexpected key" in line),
            str(exc).splitlines()[0],
        )
        raise GalmergeError(
            f"--init-from {source}: its weights do not fit this model ({detail}); use a run "
            f"with the same backbone, backbone options, channels and image size"
        ) from None


def load_init_strategies(strategies: nn.ModuleDict, init: Mapping[str, Any]) -> list[str]:
    """Load each strategy module whose whole state the checkpoint holds with matching shapes
    (checkpoints written before ``strategy_state`` existed hold none); returns their names."""
    saved = init.get("strategy_state") or {}
    loaded = []
    for name, module in strategies.items():
        own = module.state_dict()
        if not own:
            continue
        theirs = {k: saved.get(f"{name}.{k}") for k in own}
        if all(v is not None and v.shape == own[k].shape for k, v in theirs.items()):
            module.load_state_dict(theirs)
            loaded.append(name)
    return loaded


def init_specs(init: Mapping[str, Any], channels: int, source: str) -> dict[str, dict[str, Any]]:
    """The checkpoint's preprocessing specs (``init_keep_preprocess``), checked to fit."""
    specs = dict(init.get("preprocess") or {})
    for role in ("source", "target"):
        spec = specs.get(role)
        if not isinstance(spec, Mapping) or int(spec.get("channels", -1)) != channels:
            raise GalmergeError(
                f"--init-from {source}: its {role} preprocessing does not fit {channels}-band "
                f"images; set init_keep_preprocess = false to measure normalisation anew"
            )
    return {"source": dict(specs["source"]), "target": dict(specs["target"])}
