"""The classifier (backbone + head) and its checkpoint format.

A checkpoint is a dict that loads with ``torch.load(weights_only=True)``::

    {"format": "galmerge-checkpoint/1", "galmerge_version": str,
     "galmerge_commit": str | None, "galmerge_dirty": bool | None,  # io.provenance.code_identity
     "backbone": str, "backbone_options": dict, "in_channels": int, "image_size": int,
     "num_classes": int, "model": state_dict, "temperature": float,
     "preprocess": {"source": spec, "target": spec},   # see galmerge.data.preprocess
     "config": dict,                                   # the resolved run config
     "epoch": int, "training_state": dict | None,      # optimiser etc., for --resume
     "plugin_versions": {"backbone"|"strategy"|"survey": {name: {"plugin": str,
                         "distribution": str, "version": str}}},  # galmerge.plugin.versions
     "sha256": str}                                    # of all the above: see content_sha256

``sha256`` is checked on every load: a damaged file (a flipped byte in the weights) is refused
instead of classifying with wrong weights. Checkpoints written before it existed load unchecked.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from galmerge.data.preprocess import PreprocessSpec
from galmerge.errors import GalmergeError, PluginBug
from galmerge.io import atomic
from galmerge.models import domain_norm
from galmerge.plugin import versions
from galmerge.plugin.manager import get_plugin_manager
from galmerge.plugin.records import plugin_bug

CHECKPOINT_FORMAT = "galmerge-checkpoint/1"


class GalaxyClassifier(nn.Module):
    """Backbone features -> head logits; ``forward`` returns both (DA losses need features)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.out_features = int(backbone.out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return features, self.head(features)


def build_model(
    backbone: str,
    in_channels: int,
    image_size: int,
    num_classes: int = 2,
    options: dict[str, Any] | None = None,
) -> GalaxyClassifier:
    """Build a classifier from a registered backbone name."""
    record = get_plugin_manager().get("backbones", backbone)
    net = record.build(in_channels, image_size, **(options or {}))  # checked by the record
    _check_features(backbone, net, in_channels, image_size)
    if record.build_head is not None:
        head = record.build_head(int(net.out_features), num_classes)
    else:
        head = nn.Linear(int(net.out_features), num_classes)
    # a backbone may initialise the head it feeds (ResNet-18's DeepMerge II layout does)
    init_head = getattr(net, "init_head", None)
    if callable(init_head):
        init_head(head)
    return GalaxyClassifier(net, head)


def _check_features(name: str, net: nn.Module, in_channels: int, image_size: int) -> None:
    """One forward pass on zeros (2, C, H, W), in eval mode without gradients (no running
    statistic moves): the features must be (2, out_features), else the head built on
    ``out_features`` fails later with a shape error deep in training. A plugin's bug here is
    a `PluginBug` naming it."""
    width = int(net.out_features)
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            features = net(torch.zeros(2, in_channels, image_size, image_size))
    except GalmergeError:
        raise
    except Exception as exc:
        raise plugin_bug("backbone", name,
                         f"its module failed on a (2, {in_channels}, {image_size}, {image_size}) "
                         f"batch of zeros: {type(exc).__name__}: {exc}".splitlines()[0][:300]
                         ) from exc
    finally:
        net.train(was_training)
    shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
    if shape != (2, width):
        got = f"features of shape {shape}" if shape is not None else \
            f"a {type(features).__name__}, not a tensor"
        raise plugin_bug("backbone", name,
                         f"its module gives {got} for 2 images, but its out_features says "
                         f"{width}; forward must return (N, out_features)")


def content_sha256(payload: Any) -> str:
    """SHA-256 of a checkpoint's content: keys, scalars and every tensor's dtype, shape, bytes.

    Computed on the loaded objects (not the file's bytes), so it does not depend on how torch
    lays out the archive; the ``sha256`` entry itself is left out.
    """
    h = hashlib.sha256()

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            keys = [k for k in obj if not (obj is payload and k == "sha256")]
            h.update(f"D{len(keys)}:".encode())
            for key in sorted(keys, key=repr):
                h.update(f"K{key!r}:".encode())
                walk(obj[key])
        elif isinstance(obj, list | tuple):
            h.update(f"L{type(obj).__name__}{len(obj)}:".encode())
            for item in obj:
                walk(item)
        elif isinstance(obj, float) and math.isnan(obj):
            h.update(b"Fnan;")
        else:
            h.update(f"S{type(obj).__name__}{obj!r};".encode())

    walk(payload)
    return h.hexdigest()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Write atomically (`galmerge.io.atomic`) with the content's SHA-256; returns that hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _plain({"format": CHECKPOINT_FORMAT, **payload}, "")
    payload.pop("sha256", None)
    payload["sha256"] = content_sha256(payload)
    with atomic.atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return str(payload["sha256"])


#: what a checkpoint holds besides containers, tensors and plain scalars (weights-only loadable)
_TORCH_VALUES = (torch.dtype, torch.device, torch.memory_format, torch.layout)


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy scalars and arrays as plain Python values, which the weights-only
    loader reads (a survey plugin's ``np.str_`` band or ``np.float64`` pixel scale would make
    a checkpoint no command can open). Containers are rebuilt only where a value changed, so
    a state_dict keeps its type and metadata. Any other object is refused here, naming its
    place, rather than written into a file that cannot be read back."""
    if obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str, bytes, *_TORCH_VALUES)):
        if isinstance(obj, np.generic):  # np.str_ and np.float64 subclass str and float
            return obj.item()
        return obj
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        items = {key: _plain(value, f"{where}.{key}" if where else str(key))
                 for key, value in obj.items()}
        if all(items[key] is value for key, value in obj.items()) and \
                not any(isinstance(key, np.generic) for key in obj):
            return obj
        return {(key.item() if isinstance(key, np.generic) else key): value
                for key, value in items.items()}
    if isinstance(obj, list | tuple):
        values = [_plain(value, f"{where}[{i}]") for i, value in enumerate(obj)]
        if all(new is old for new, old in zip(values, obj, strict=True)):
            return obj
        return values if isinstance(obj, list) else tuple(values)
    raise GalmergeError(
        f"checkpoint entry '{where}' is a {type(obj).__module__}.{type(obj).__qualname__} "
        f"({_shorten(repr(obj), 60)}), which a galmerge checkpoint cannot hold; a plugin "
        "(survey, backbone or strategy) must give plain Python values there")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its ``best.pt``; a file is taken as it is."""
    p = Path(path)
    if p.is_dir():
        if (p / "best.pt").is_file():
            return p / "best.pt"
        # never last.pt in its place unasked: a run writes best.pt at its first epoch with a
        # finite selection score and at its end, so without one last.pt is an unfinished run's
        if (p / "last.pt").is_file():
            raise GalmergeError(
                f"run directory {p} has no best.pt (its training stopped before it kept one); "
                f"finish it with galmerge train --resume {p}, or pass {p / 'last.pt'} to use "
                "its latest weights")
        raise GalmergeError(f"no best.pt or last.pt in run directory {p}; train first")
    if not p.is_file():
        raise GalmergeError(f"model {p} does not exist; pass a run directory or a .pt file")
    return p


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = resolve_checkpoint(path)
    from galmerge.models.export import is_torchscript

    if is_torchscript(p):  # before torch.load, which warns in two lines and dispatches to jit
        raise GalmergeError(f"{p} is a TorchScript archive, not a galmerge checkpoint (loading it "
                            "runs the code it holds); pass a run directory or its best.pt")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except (PermissionError, FileNotFoundError, IsADirectoryError) as exc:
        raise GalmergeError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    except Exception as exc:
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if unsupported:  # written by a version or plugin that stored an object, not damage
            raise GalmergeError(
                f"{p} holds a {unsupported.group(1)} object, which galmerge does not load from a "
                "checkpoint (the weights-only loader refuses it; the file is not damaged): "
                "it was written by a galmerge version or plugin that stored a non-plain value, "
                "e.g. a survey plugin's numpy string or scalar; train again with this version, "
                "which stores plain values") from None
        # torch's text names a byte value, or suggests weights_only=False: never the advice
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = (type(exc).__name__ if "weights_only" in str(exc) or len(first) < 8
               else _shorten(first, 120))
        raise GalmergeError(
            f"{p} is not a readable galmerge checkpoint (damaged, cut short or another kind of "
            f"file: {why}); pass a run directory or its best.pt, or train again") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise GalmergeError(f"{p} is not a galmerge checkpoint ({CHECKPOINT_FORMAT})")
    recorded = payload.get("sha256")
    if recorded is not None and (not isinstance(recorded, str)
                                 or content_sha256(payload) != recorded):
        raise GalmergeError(f"checkpoint {p} is damaged: its content does not match the SHA-256 "
                            "recorded in it; restore it from a copy or train again")
    return payload


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters: after its last whole sentence that fits,
    else at a word boundary, marked with '...'."""
    if len(text) <= limit:
        return text
    sentence = text[: limit + 1].rfind(". ")
    if sentence > limit // 3:
        return text[:sentence]
    cut = text[: limit - 3].rstrip()
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "..."


@dataclass
class LoadedModel:
    """A model ready for inference plus what is needed to feed it."""

    model: GalaxyClassifier
    preprocess: dict[str, PreprocessSpec]  # per domain ("source", "target")
    config: dict[str, Any]
    temperature: float
    path: Path
    sha256: str | None = None  # the checkpoint's content hash (None: written before it existed)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the classifier of a run directory or checkpoint, in eval mode."""
    p = resolve_checkpoint(path)
    payload = read_checkpoint(p)
    # a plugin's error names the backbone version the checkpoint was trained with and the one
    # installed now where they differ (`galmerge.plugin.versions`); a changed one that loads warns
    with versions.trained_with(payload, f"checkpoint {p}", ("backbone",)):
        model, specs = _rebuild(payload, p)
    bad = [name for name, t in payload["model"].items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise GalmergeError(f"checkpoint {p} has non-finite (NaN/inf) weights in {bad[0]}; "
                            "use a checkpoint from before training diverged, or retrain")
    model.to(device).eval()
    return LoadedModel(
        model=model,
        preprocess=specs,
        config=dict(payload.get("config") or {}),
        temperature=_temperature(payload.get("temperature", 1.0), p),
        path=p,
        sha256=payload.get("sha256") if isinstance(payload.get("sha256"), str) else None,
    )


def _rebuild(payload: dict[str, Any], p: Path
             ) -> tuple[GalaxyClassifier, dict[str, PreprocessSpec]]:
    """The checkpoint's model with its weights, and its preprocessing specs."""
    try:
        model = build_model(
            payload["backbone"],
            int(payload["in_channels"]),
            int(payload["image_size"]),
            int(payload.get("num_classes", 2)),
            dict(payload.get("backbone_options") or {}),
        )
        state = payload["model"]
        encoder = domain_norm.state_has_target_encoder(state)
        if encoder or domain_norm.state_has_target_statistics(state):
            # trained with domain_batchnorm=separate (specific: affine parameters too;
            # target_encoder=separate: every backbone parameter)
            domain_norm.add_target_statistics(
                model, affine=domain_norm.state_has_target_affine(state), encoder=encoder)
        model.load_state_dict(payload["model"])
        specs = {str(domain): PreprocessSpec.from_dict(spec, f"checkpoint {p}: {domain} "
                                                       "preprocessing")
                 for domain, spec in dict(payload["preprocess"]).items()}
    except (GalmergeError, PluginBug):  # one line already (a plugin's bug: its traceback too)
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        what = f"no '{exc.args[0]}' entry" if isinstance(exc, KeyError) else \
            str(exc).strip().splitlines()[0][:200]
        raise GalmergeError(f"checkpoint {p} does not hold a model its backbone "
                            f"'{payload.get('backbone')}' can load ({what}); pass a checkpoint "
                            "written by galmerge train") from None
    return model, specs


def _temperature(value: Any, path: Path) -> float:
    """A calibration temperature must be a positive finite number (p = softmax(z / T))."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise GalmergeError(f"checkpoint {path}: temperature {value!r} is not a positive finite "
                            "number; retrain (training calibrates it)")
    return float(value)
