"""The two domains of a run: image sets, splits, preprocessing specs and batch streams."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from galmerge.data import observe
from galmerge.data.batches import StreamingBatches, TensorBatches
from galmerge.data.field import field_library
from galmerge.data.preprocess import PreprocessSpec, compute_spec
from galmerge.data.splits import domain_splits
from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet
from galmerge.runtime import distributed as ddp


@dataclass
class Domain:
    """One domain's image set, splits, preprocessing spec and (when in memory) device tensors."""

    name: str
    imageset: ImageSet
    splits: dict[str, np.ndarray]
    spec: PreprocessSpec
    images: torch.Tensor | None  # normalised, on the device; None for lazy sets
    role: str  # "source" or "target": whose BatchNorm statistics it is seen with

    def features_input(self, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        if self.images is not None:
            return self.images.index_select(0, torch.as_tensor(idx, device=device))
        return self.spec.apply(self.imageset.batch(idx).to(device))


def load_imageset(spec: str | ImageSet | None, name: str, role: str = "") -> ImageSet:
    """The set given in Python, else the one the spec ``name`` loads. A name that is no
    survey's (an in-memory set's own name, recorded by a run trained on it) says how to pass
    the sets again, not only "unknown survey"."""
    if isinstance(spec, ImageSet):
        return spec
    from galmerge.data.datasets import in_memory_advice, names_no_survey
    from galmerge.data.datasets import load_imageset as load

    if role and names_no_survey(name):
        raise GalmergeError(in_memory_advice(name, role))
    return load(name)


#: BLOCK images at a time are checked for NaN/inf pixels (bounded extra memory)
FINITE_BLOCK = 1024


def check_finite(imageset: ImageSet, role: str) -> None:
    """A one-line error when an ImageSet given in Python holds NaN/inf pixels, which would
    else surface as a non-finite loss blamed on the learning rate (files are checked by
    their survey, e.g. `galmerge.io.hdf5.validate_imageset_file`). A set that stays on disk
    (a survey's lazy HDF5 images) is its survey's to check, which it did on loading unless told
    not to (``?check_finite=false``, for huge files): it is not read again here."""
    if not imageset.in_memory:
        return
    n, bad, first = len(imageset), 0, -1
    for start in range(0, n, FINITE_BLOCK):
        stop = min(start + FINITE_BLOCK, n)
        block = imageset.images[start:stop]
        finite = torch.isfinite(torch.as_tensor(block)).reshape(stop - start, -1).all(dim=1)
        if not bool(finite.all()):
            bad += int((~finite).sum())
            first = start + int(torch.nonzero(~finite)[0, 0]) if first < 0 else first
    if bad:
        raise GalmergeError(
            f"{role} ImageSet '{imageset.survey}' has non-finite pixels (NaN/inf) in {bad} of "
            f"{n} images (first: image {first}); replace or drop those images")


def _prepare(
    name: str, imageset: ImageSet, splits: dict[str, np.ndarray], device: torch.device,
    spec: PreprocessSpec | None, role: str,
) -> Domain:
    if spec is None:
        spec = compute_spec(imageset, splits["train"], name)
    images = None
    if imageset.in_memory:
        # Normalise once and keep the whole set on the device: no per-step host work.
        images = spec.apply(imageset.images.to(device))  # type: ignore[union-attr]
    return Domain(name, imageset, splits, spec, images, role)


def _labelled(imageset: ImageSet, idx: np.ndarray) -> np.ndarray:
    labels = imageset.labels.numpy()[idx]
    return idx[labels >= 0]


def prepare_domains(
    config: MutableMapping[str, Any], source_set: ImageSet, target_set: ImageSet,
    device: torch.device, specs: Mapping[str, PreprocessSpec] | None = None,
) -> tuple[Domain, Domain]:
    """Split both sets (seeded), keep labelled source images, normalise. ``specs`` (from an
    ``init_from`` checkpoint) replaces the specs measured on the training splits. With an
    ``[observe]`` section the source is observed first (`galmerge.data.observe`), and its
    ``sky_sigma = "auto"`` is replaced in ``config`` by the numbers measured."""
    if source_set.channels != target_set.channels or source_set.image_size != target_set.image_size:
        raise GalmergeError(
            f"source {config['source']} has {source_set.channels}x{source_set.image_size}x"
            f"{source_set.image_size} images but target {config['target']} has "
            f"{target_set.channels}x{target_set.image_size}x{target_set.image_size}; "
            f"pick surveys with the same bands and cutout size"
        )
    splits = domain_splits(len(source_set), len(target_set), int(config["seed"]),
                           (f"source {config['source']}", f"target {config['target']}"))
    s_splits = {k: _labelled(source_set, v) for k, v in splits["source"].items()}
    if len(s_splits["train"]) == 0:
        raise GalmergeError(f"source {config['source']} has no labelled training images")
    if len(s_splits["train"]) < 3:  # the shift score, fitted when training ends, needs 3
        raise GalmergeError(f"source {config['source']} has {len(s_splits['train'])} labelled "
                            f"training images of {len(source_set)}; give it at least 10 images")
    if observe.active(config.get("observe")):
        # one detection pass: the library both measures the "auto" numbers and is pasted
        field = (field_library(target_set, splits["target"]["train"], source_set,
                               s_splits["train"])
                 if observe.needs_target(config["observe"]) else None)
        config["observe"] = observe.resolve(config["observe"], source_set, target_set,
                                            s_splits["train"], splits["target"]["train"], field,
                                            seed=int(config["seed"]))
        source_set = observe.observed(source_set, config["observe"], int(config["seed"]), field)
    specs = specs or {}
    source = _prepare(config["source"], source_set, s_splits, device, specs.get("source"),
                      "source")
    target = _prepare(config["target"], target_set, splits["target"], device, specs.get("target"),
                      "target")
    return source, target


def batch_stream(
    domain: Domain, batch: int, seed: int, device: torch.device, dist: ddp.DistInfo,
    with_labels: bool,
) -> Any:
    """Endless training batches of ``domain``'s train split (labels only for the source)."""
    if domain.images is not None:
        labels = domain.imageset.labels.to(device) if with_labels else None
        return TensorBatches(
            domain.images, labels, batch, seed, dist.rank, dist.world,
            pool=torch.as_tensor(domain.splits["train"]),
        )
    return StreamingBatches(
        domain.imageset, domain.splits["train"], domain.spec, batch, seed, device, with_labels,
        dist.rank, dist.world,
    )
