"""The preprocessing spec saved with every model, and the one function that applies it.

`PreprocessSpec` is the typed form; checkpoints, run directories and exported models store its
plain dict form (TOML/JSON/torch-safe), read and written back unchanged (`from_dict` /
`as_dict`)::

    {"survey": "synthetic:sdss", "bands": ["g", "r", "i"], "channels": 3, "image_size": 75,
     "pixel_scale_arcsec": 0.396, "image_source": "frames",
     "stretch": "arcsinh", "stretch_scale": 0.05, "mean": [...], "std": [...]}

Images are stretched (``asinh(x / stretch_scale)`` or left alone), then standardised per band
with ``mean``/``std`` measured on the training split of that domain. Training, evaluation,
inference and classify all go through `PreprocessSpec.apply` (``normalise``), so a stamp is
preprocessed bit for bit the same way everywhere (the exported ONNX/TorchScript graph carries
its own copy of the formula, checked against it by the export tests).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from galmerge.errors import GalmergeError
from galmerge.plugin.imageset import ImageSet

MAX_STAT_IMAGES = 2000
STRETCHES = ("none", "arcsinh")
IMAGE_SOURCES = ("frames", "jpeg", "fits")

LN2 = 0.6931471805599453


def asinh_(x: torch.Tensor) -> torch.Tensor:
    """``asinh(x)`` computed in place (float tensors, within ~1 ulp of torch.asinh).

    sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))), from ops ATen vectorises on every CPU:
    torch.asinh and numpy.arcsinh are scalar loops on CPUs without AVX-512, where they cost
    more than the DeepMerge forward pass (classify's warm-cache path; 3-6x slower there).
    """
    a = x.abs()
    t = torch.mul(a, a)
    t.div_(torch.add(t, 1.0).sqrt_().add_(1.0)).add_(a).log1p_()
    huge = a > 1e18  # x^2 overflows: asinh(x) = log(2|x|) to float precision
    # off the CPU the test would cost a device sync per batch; torch.where alone gives the
    # same values
    if x.device.type != "cpu" or bool(huge.any()):
        t = torch.where(huge, a.log_().add_(LN2), t)
    return x.copy_(t.copysign_(x))



_FIELDS = ("survey", "bands", "channels", "image_size", "pixel_scale_arcsec", "image_source",
           "stretch", "stretch_scale", "mean", "std")


@dataclass(frozen=True)
class PreprocessSpec(Mapping[str, Any]):
    """How a model's input images were made and are standardised (one per domain).

    A read-only mapping too: ``spec["bands"]`` / ``spec.get("jpeg_scale")`` read the stored dict
    form, so code written against the dict keeps working. Keys this version does not know (a
    survey's own, e.g. ``jpeg_scale``) are kept in ``extra`` and written back.
    ``mean``/``std`` are None until measured (`compute_spec`).
    """

    bands: tuple[str, ...] = ()
    image_size: int | None = None
    pixel_scale_arcsec: float | None = None
    stretch: str = "none"
    stretch_scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    survey: str | None = None
    channels: int | None = None
    image_source: str = "frames"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._plain()
        if self.stretch not in STRETCHES:
            raise GalmergeError(f"preprocessing stretch must be {' or '.join(STRETCHES)}, "
                                f"not {self.stretch!r}")
        if self.stretch == "arcsinh" and not (self.stretch_scale > 0
                                              and math.isfinite(self.stretch_scale)):
            raise GalmergeError(f"preprocessing stretch_scale must be a number above 0, not "
                                f"{self.stretch_scale!r}")
        if (self.mean is None) != (self.std is None):
            raise GalmergeError("preprocessing spec needs both mean and std, or neither")
        if self.mean is not None and len(self.mean) != len(self.std or ()):
            raise GalmergeError(f"preprocessing spec has {len(self.mean)} means but "
                                f"{len(self.std or ())} stds")
        object.__setattr__(self, "_raw", self._canonical())

    def _plain(self) -> None:
        """Plain Python values in place of numpy strings and scalars (what np.load, h5py and
        FITS headers give): a checkpoint holding one is refused by the weights-only loader."""
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("bands", tuple(str(b) for b in self.bands))
        for name, kind in (("image_size", int), ("channels", int), ("pixel_scale_arcsec", float),
                           ("survey", str)):
            value = getattr(self, name)
            if value is not None and type(value) is not kind:
                put(name, kind(value))
        for name in ("stretch", "image_source"):
            if isinstance(getattr(self, name), str):
                put(name, str(getattr(self, name)))
        if (isinstance(self.stretch_scale, numbers.Real) and not isinstance(self.stretch_scale, bool)
                and type(self.stretch_scale) is not float):
            put("stretch_scale", float(self.stretch_scale))
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                put(name, tuple(float(v) for v in getattr(self, name)))

    # -- the stored dict form ------------------------------------------------------------------
    def _canonical(self) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        if self.survey is not None:
            raw["survey"] = self.survey
        raw["bands"] = list(self.bands)
        if self.channels is not None:
            raw["channels"] = self.channels
        if self.image_size is not None:
            raw["image_size"] = self.image_size
        raw["pixel_scale_arcsec"] = self.pixel_scale_arcsec
        raw["image_source"] = self.image_source
        raw["stretch"] = self.stretch
        raw["stretch_scale"] = self.stretch_scale
        if self.mean is not None:
            raw["mean"] = list(self.mean)
            raw["std"] = list(self.std or ())
        raw.update(copy.deepcopy(dict(self.extra)))
        return raw

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "preprocessing spec"
                  ) -> PreprocessSpec:
        """The spec of a stored dict; `as_dict` gives that dict back unchanged (key order,
        value types), so signatures and cache keys computed from it stay the same."""
        if isinstance(data, PreprocessSpec):
            return data
        if not isinstance(data, Mapping):
            raise GalmergeError(f"{what} is not a table of settings ({type(data).__name__})")
        try:
            mean, std = data.get("mean"), data.get("std")
            size, channels = data.get("image_size"), data.get("channels")
            scale = data.get("pixel_scale_arcsec")
            spec = cls(
                bands=tuple(str(b) for b in data.get("bands") or ()),
                image_size=None if size is None else int(size),
                pixel_scale_arcsec=None if scale is None else float(scale),
                stretch=str(data.get("stretch", "none")),
                stretch_scale=float(data.get("stretch_scale", 1.0)),
                mean=None if mean is None else tuple(float(v) for v in mean),
                std=None if std is None else tuple(float(v) for v in std),
                survey=None if data.get("survey") is None else str(data["survey"]),
                channels=None if channels is None else int(channels),
                image_source=str(data.get("image_source") or "frames"),
                extra={k: v for k, v in data.items() if k not in _FIELDS},
            )
        except (TypeError, ValueError) as exc:
            raise GalmergeError(f"{what} is malformed ({exc})".splitlines()[0]) from None
        object.__setattr__(spec, "_raw", copy.deepcopy(dict(data)))
        return spec

    def as_dict(self) -> dict[str, Any]:
        """The plain dict form checkpoints, config and exported models store."""
        return copy.deepcopy(self._raw)  # type: ignore[attr-defined]

    def __getitem__(self, key: str) -> Any:
        return self._raw[key]  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self._raw)  # type: ignore[attr-defined]

    # -- what a survey needs to cut matching stamps ---------------------------------------------
    @property
    def n_channels(self) -> int:
        """Channels of the model's input: ``channels``, else one per mean, else per band."""
        if self.channels is not None:
            return self.channels
        return len(self.mean) if self.mean is not None else len(self.bands)

    def stamp_geometry(
        self, survey: str, *, bands: Iterable[str] | None = None,
        sources: Iterable[str] = ("frames",), size: tuple[int, int] = (4, 2048),
        scale: tuple[float, float] | None = None, default_scale: float,
    ) -> tuple[list[str], int, float]:
        """(bands, image_size, pixel scale) a survey cuts for this model, or a one-line refusal.

        ``bands``: the bands the survey has (None: any); ``sources``: the ``image_source``
        values it serves; ``size``/``scale``: the stamp sizes (pixels) and pixel scales
        (arcsec) it can cut; a spec without a pixel scale gets ``default_scale``.
        """
        sources = tuple(sources)
        if self.image_source not in sources:
            raise GalmergeError(
                f"{survey} serves {' or '.join(repr(s) for s in sources)} images, not "
                f"image_source '{self.image_source}'; use a model trained on such inputs")
        got = list(self.bands)
        if bands is not None:
            have = [str(b) for b in bands]
            if not got or any(b not in have for b in got) or len(set(got)) != len(got):
                names = ",".join(got) or "(none)"
                raise GalmergeError(
                    f"{survey} cannot provide this model's bands {names}: it cannot produce "
                    f"bands {names} (it has {','.join(have)}); use a model trained on distinct "
                    "bands among those")
        n = int(self.image_size or 0)
        if not size[0] <= n <= size[1]:
            raise GalmergeError(f"{survey} cannot cut {n}-pixel stamps; the model's image_size "
                                f"must be {size[0]}..{size[1]}")
        arcsec = float(self.pixel_scale_arcsec or default_scale)
        if scale is not None and not scale[0] <= arcsec <= scale[1]:
            raise GalmergeError(f"{survey} cannot produce {arcsec} arcsec/pixel stamps; "
                                f"expected {scale[0]:g}..{scale[1]:g}")
        return got, n, arcsec

    # -- the one preprocessing path ------------------------------------------------------------
    def stretched(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` stretched (a new tensor when stretched; the input is never changed)."""
        if self.stretch == "arcsinh":
            # asinh_, not torch.asinh: the same formula on every CPU (torch's is a scalar loop
            # without AVX-512), in place on the fresh quotient
            return asinh_(images / float(self.stretch_scale))
        return images

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images (N, C, H, W) -> the model's input: float32 on the same device."""
        if self.mean is None or self.std is None:
            raise GalmergeError("this preprocessing spec has no mean/std; measure them first "
                                "(retrain with this galmerge version)")
        x = self.stretched(images.float())
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def compute_spec(imageset: ImageSet, indices: np.ndarray, survey: str) -> PreprocessSpec:
    """Measure per-band statistics on ``indices`` (at most 2000 of them, evenly spaced)."""
    idx = np.asarray(indices)
    if len(idx) > MAX_STAT_IMAGES:
        idx = idx[np.linspace(0, len(idx) - 1, MAX_STAT_IMAGES).astype(np.int64)]
    spec = PreprocessSpec(
        survey=survey,
        bands=tuple(imageset.bands),
        channels=imageset.channels,
        image_size=imageset.image_size,
        pixel_scale_arcsec=imageset.pixel_scale_arcsec,
        image_source=imageset.image_source,
        stretch=imageset.stretch or "none",
        stretch_scale=1.0 if imageset.stretch_scale is None else float(imageset.stretch_scale),
    )
    x = spec.stretched(imageset.batch(idx).double())
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-8)
    return PreprocessSpec(**{**_init_args(spec), "mean": tuple(float(v) for v in mean),
                             "std": tuple(float(v) for v in std)})


def _init_args(spec: PreprocessSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def normalise(images: torch.Tensor, spec: PreprocessSpec | Mapping[str, Any]) -> torch.Tensor:
    """Apply a spec (or its dict form) to raw images (N, C, H, W); float32, same device."""
    return PreprocessSpec.from_dict(spec).apply(images)
