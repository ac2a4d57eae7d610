"""best.pt / last.pt payloads and ``init_from`` (transfer learning from an earlier run)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from galmerge.data.preprocess import PreprocessSpec
from galmerge.errors import GalmergeError, PluginBug
from galmerge.models import domain_norm
from galmerge.models.model import GalaxyClassifier, read_checkpoint
from galmerge.plugin import versions


def payload(
    config: Mapping[str, Any], model: GalaxyClassifier, strategies: nn.Module,
    preprocess: Mapping[str, PreprocessSpec], shape: tuple[int, int], epoch: int,
    training_state: dict[str, Any] | None, plugin_versions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint (see ``galmerge.models.model``); ``strategy_state`` holds the strategy modules'
    weights (a DANN discriminator, Fisher centres) for ``init_from``; ``shape`` is
    (in_channels, image_size); ``plugin_versions``: `plugin_record`'s (None: no record)."""
    from galmerge.io.provenance import code_identity

    return {
        **code_identity(),  # galmerge_version, galmerge_commit, galmerge_dirty
        "backbone": config["backbone"],
        "backbone_options": dict(config["backbone_options"]),
        "in_channels": shape[0],
        "image_size": shape[1],
        "num_classes": 2,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "strategy_state": {k: v.detach().cpu() for k, v in strategies.state_dict().items()},
        "temperature": 1.0,
        "preprocess": {k: PreprocessSpec.from_dict(v).as_dict() for k, v in preprocess.items()},
        "config": config,
        "epoch": epoch,
        "training_state": training_state,
        versions.KEY: dict(plugin_versions or {}),
    }


def plugin_record(config: Mapping[str, Any]) -> dict[str, dict[str, dict[str, str]]]:
    """Which distribution and version provide the run's backbone, each strategy of its
    expression and each survey its data specs name (`galmerge.plugin.versions`)."""
    from galmerge.data.datasets import parse_survey_spec

    surveys = []
    for role in ("source", "target"):
        try:  # an image set given in-process records its survey's name, maybe no plugin's
            surveys.append(parse_survey_spec(str(config[role]))[0])
        except GalmergeError:
            continue
    return versions.record(str(config["backbone"]), [str(s) for s in config["strategies"]],
                           surveys)


@contextmanager
def hint_from(path: Path) -> Iterator[None]:
    """Around resolving the config of the run whose checkpoint ``path`` is (``--resume``): a
    plugin's error (an option a newer release renamed, a component gone) gets the plugin
    versions that checkpoint was trained with and those installed now added to its one line.
    The checkpoint is read only then; unreadable, it adds nothing."""
    try:
        yield
    except (GalmergeError, PluginBug) as exc:
        try:
            recorded = read_checkpoint(path).get(versions.KEY)
        except GalmergeError:  # its own error comes later, where it is read for its weights
            recorded = None
        versions.add_hint(exc, recorded)
        raise


def load_init_weights(model: GalaxyClassifier, init: Mapping[str, Any], source: str,
                      backbone: str | None = None) -> None:
    """Load an earlier run's weights. Per-domain BatchNorm statistics
    (`galmerge.models.domain_norm`) are carried over when both models keep them; a model that
    keeps them but starts from one set starts both domains from it; one set is kept when the
    new model has one. ``backbone``: this run's, compared with the checkpoint's first."""
    theirs = init.get("backbone")
    if backbone is not None and isinstance(theirs, str) and theirs != backbone:
        raise GalmergeError(f"--init-from {source}: it is a {theirs} model and this run trains "
                            f"{backbone}; pass --backbone {theirs} or a {backbone} checkpoint")
    state = domain_norm.fit_state(model, dict(init["model"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "size mismatch" in line
             or "Missing key" in line or "Unexpected key" in line),
            str(exc).splitlines()[0],
        )
        head, colon, keys = detail.partition(": ")
        names = [k.strip().strip('".') for k in keys.split('", "') if k.strip()]
        if (colon and len(names) > 3  # every key of the model: thousands of characters
                and head.startswith(("Missing key", "Unexpected key"))):
            detail = f"{head}: {', '.join(names[:3])} and {len(names) - 3} more"
        raise GalmergeError(
            f"--init-from {source}: its weights do not fit this model ({detail}); use a run "
            f"with the same backbone, backbone options, channels and image size"
        ) from None


def load_init_strategies(strategies: nn.ModuleDict, init: Mapping[str, Any],
                         fresh: Iterable[str] = ()) -> list[str]:
    """Load each strategy module whose whole state the checkpoint holds with matching shapes
    (checkpoints written before ``strategy_state`` existed hold none), except those named in
    ``fresh`` (``init_fresh_strategies``); returns the names loaded."""
    saved = init.get("strategy_state") or {}
    skip = set(fresh)
    loaded = []
    for name, module in strategies.items():
        own = module.state_dict()
        if not own or name in skip:
            continue
        theirs = {k: saved.get(f"{name}.{k}") for k in own}
        if all(v is not None and v.shape == own[k].shape for k, v in theirs.items()):
            module.load_state_dict(theirs)
            loaded.append(name)
    return loaded


def init_specs(init: Mapping[str, Any], channels: int, source: str
               ) -> dict[str, PreprocessSpec]:
    """The checkpoint's preprocessing specs (``init_keep_preprocess``), checked to fit."""
    specs = dict(init.get("preprocess") or {})
    for role in ("source", "target"):
        spec = specs.get(role)
        if not isinstance(spec, Mapping) or int(spec.get("channels", -1)) != channels:
            raise GalmergeError(
                f"--init-from {source}: its {role} preprocessing does not fit {channels}-band "
                f"images; set init_keep_preprocess = false to measure normalisation anew"
            )
    return {role: PreprocessSpec.from_dict(specs[role], f"--init-from {source}: its {role} "
                                           "preprocessing") for role in ("source", "target")}


def resume_specs(last: Mapping[str, Any], channels: int, run_dir: Path
                 ) -> dict[str, PreprocessSpec] | None:
    """The preprocessing specs a run trained with, from its last.pt (``--resume``): measured
    again they would differ where the run took them from ``init_from``
    (``init_keep_preprocess``). None for a last.pt from before per-domain specs (measured
    again, as then)."""
    specs = last.get("preprocess")
    if not isinstance(specs, Mapping) or not all(
            isinstance(specs.get(role), Mapping) for role in ("source", "target")):
        return None
    out = {}
    for role in ("source", "target"):
        what = f"--resume {run_dir}: last.pt's {role} preprocessing"
        spec = PreprocessSpec.from_dict(specs[role], what)
        if spec.n_channels != channels:
            raise GalmergeError(f"{what} is for {spec.n_channels}-band images, not the "
                                f"{channels} bands of the data given; resume with the run's own "
                                "data, or start a new run")
        out[role] = spec
    return out
