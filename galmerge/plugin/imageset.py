"""The one in-memory form of a labelled image set, shared by every survey and the trainer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from galmerge.errors import GalmergeError


class LazyImages(Protocol):
    """Images that stay on disk (an HDF5 dataset): indexable by sorted integer arrays."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: np.ndarray) -> np.ndarray: ...


#: the ImageSet fields older versions kept as ``meta`` keys
LEGACY_META_KEYS = ("image_source", "stretch", "stretch_scale", "storage_dtype")
_DEFAULTS: dict[str, Any] = {"image_source": "frames", "stretch": None, "stretch_scale": None,
                             "storage_dtype": None}


def _check_images(images: Any) -> None:
    """``images`` is (N, C, H, W) with square stamps, or a one-line GalmergeError saying how to
    make it so (the wording of the HDF5 file checks, `galmerge.io.hdf5.validate_imageset_file`):
    anything else fails deep inside the model or preprocessing."""
    shape = getattr(images, "shape", None)
    if shape is None:
        raise GalmergeError(f"ImageSet images must be an array or tensor (N, C, H, W), got "
                            f"{type(images).__name__}; e.g. images=numpy.stack(stamps)")
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3:
        raise GalmergeError(f"ImageSet images have shape {shape}; expected (N, C, H, W): add "
                            "the channel axis, e.g. images[:, None] for one band")
    if len(shape) != 4:
        raise GalmergeError(f"ImageSet images have shape {shape}; expected (N, C, H, W)")
    _, c, h, w = shape
    if w <= 4 < c and c == h:
        raise GalmergeError(f"ImageSet images have shape {shape}, which looks channels-last "
                            "(N, H, W, C); give them as (N, C, H, W), e.g. "
                            "numpy.moveaxis(images, -1, 1)")
    if h != w:
        raise GalmergeError(f"ImageSet images are {h}x{w} pixels; galmerge needs square stamps "
                            "(N, C, H, H): cut them square")


def _checked_labels(labels: Any) -> torch.Tensor:
    """``labels`` as int64, each 1 (merger), 0 (non-merger) or -1 (unknown); anything else
    (a fraction, NaN, 2, a string) is a one-line GalmergeError, never cast silently (0.7 was
    0, NaN -2**63) or left to fail inside torch."""
    if isinstance(labels, torch.Tensor) and labels.dtype == torch.int64:
        values = labels  # the usual case (and every subset): no copy
    else:
        try:
            if isinstance(labels, torch.Tensor):
                labels = labels.detach().cpu()
                labels = labels.double() if labels.is_floating_point() else labels
            array = np.asarray(labels)
        except (TypeError, ValueError, RuntimeError):
            array = np.asarray(None)
        if array.dtype.kind not in "biuf":
            raise GalmergeError(
                f"ImageSet labels must be numbers (1 merger, 0 non-merger, -1 unknown), got "
                f"{_shown(labels)}; e.g. labels=(names == 'merger').astype(int)")
        values = torch.from_numpy(np.ascontiguousarray(array))
    if values.dim() != 1:
        raise GalmergeError(f"ImageSet labels must be one per image, shape (N,), got shape "
                            f"{tuple(values.shape)}; e.g. labels.ravel()")
    bad = ~((values == -1) | (values == 0) | (values == 1))
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise GalmergeError(
            f"ImageSet labels must be 1 (merger), 0 (non-merger) or -1 (unknown); label "
            f"{first} is {values[first].item()!r}: map the others to these (a missing label "
            "or NaN: -1)")
    return values.to(torch.int64)


def _checked_bands(bands: Any) -> tuple[str, ...]:
    """``bands`` as a tuple of plain strings (numpy strings from np.load, h5py or FITS headers
    are subclasses of str), or a one-line GalmergeError when it is no sequence of names."""
    if (bands is None or isinstance(bands, bytes | set | frozenset | dict)
            or not hasattr(bands, "__iter__")):
        # a set has no order: its names would be recorded in an order that changes per process
        raise GalmergeError(f"ImageSet bands must be one name per channel, in channel order, "
                            f"e.g. bands=('g', 'r', 'i'); got {_shown(bands)}")
    if isinstance(bands, str):  # "g,r,i" or "g r i" as an HDF5 attribute writes them; "F814W"
        return tuple(b for b in bands.replace(",", " ").split()) if bands.strip() else ()
    return tuple(str(b) for b in bands)


def guess_band_names(bands: Sequence[str], channels: int) -> tuple[str, ...] | None:
    """What band names that are not one per channel most likely meant for ``channels``
    channels: ``("g", ",", "r", ",", "i")`` or ``("g,r,i",)`` (the HDF5 attribute's text read
    letter by letter, or whole) split at the commas, ``("gri",)`` letter by letter; None when
    neither gives one name per channel."""
    guess: tuple[str, ...] = ()
    if any("," in b for b in bands):
        guess = tuple(b.strip() for b in "".join(bands).split(",") if b.strip())
    elif len(bands) == 1:  # ("gri",): one name for the three channels of a colour image
        guess = tuple(bands[0])
    return guess if len(guess) == channels else None


def _check_band_count(bands: tuple[str, ...], channels: int) -> None:
    """One band name per image channel, or a one-line GalmergeError: the names are what a
    checkpoint records and `classify` cuts stamps in, so a mismatch went unnoticed until a
    model met a survey (or never, recorded wrong)."""
    if len(bands) == channels:
        return
    guess = guess_band_names(bands, channels)
    if guess is not None:
        hint = f", e.g. bands={guess!r}"
    elif not bands:
        hint = f", e.g. bands={tuple(f'ch{i}' for i in range(channels))!r} if they have none"
    else:
        hint = ""
    raise GalmergeError(
        f"ImageSet has {channels} channel{'s' if channels != 1 else ''} but {len(bands)} "
        f"band{'s' if len(bands) != 1 else ''} ({_shown_names(bands)}); give one band name per "
        f"channel{hint}")


def _shown_names(bands: tuple[str, ...]) -> str:
    text = ", ".join(map(repr, bands))
    return text if len(text) <= 80 else text[:77] + "..."


def _shown(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class ImageSet:
    """N images (C, H, W), labels (1 merger, 0 non-merger, -1 unknown), ids and metadata.

    ``images`` is a float32 tensor when the set fits in memory, else a `LazyImages` reader.
    ``bands`` names each channel, in channel order, one name per channel (a string such as
    ``"g,r,i"`` or ``"g r i"`` is split at commas and spaces; a set, having no order, is
    refused); ``("ch0", "ch1", ...)`` where the channels have no names.
    What preprocessing needs are fields: ``image_source`` ("frames" for calibrated FITS frames,
    "jpeg" for 8-bit colour cutouts), ``stretch`` ("arcsinh", "none", or None when the source
    declares none: treated as "none"), ``stretch_scale`` (None: undeclared) and ``storage_dtype`` (how a file
    stores the pixels, e.g. "uint8"; None in memory). ``meta`` holds the rest (provenance a
    survey records). Older code and files put the four in ``meta`` under the same names: they
    are still read from there (`LEGACY_META_KEYS`), and written there in files (`stored_meta`).
    """

    images: torch.Tensor | LazyImages
    labels: torch.Tensor
    ids: np.ndarray
    bands: tuple[str, ...]
    survey: str
    pixel_scale_arcsec: float | None = None
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image_source: str = "frames"
    stretch: str | None = None
    stretch_scale: float | None = None
    storage_dtype: str | None = None

    def __post_init__(self) -> None:
        self.meta = dict(self.meta)
        for key in LEGACY_META_KEYS:  # written by galmerge <= 0.1 and files it wrote
            if key in self.meta:
                value = self.meta.pop(key)
                if getattr(self, key) == _DEFAULTS[key]:
                    setattr(self, key, value)
        # plain Python values: np.load, h5py and FITS headers give numpy strings and scalars
        # (subclasses of str and float), which a checkpoint's weights-only loader refuses
        self.bands = _checked_bands(self.bands)
        if self.pixel_scale_arcsec is not None:
            self.pixel_scale_arcsec = float(self.pixel_scale_arcsec)
        if self.stretch_scale is not None:
            self.stretch_scale = float(self.stretch_scale)
        for key in ("survey", "image_source", "stretch", "storage_dtype"):
            if isinstance(getattr(self, key), str):  # np.str_ -> str; anything else as given
                setattr(self, key, str(getattr(self, key)))
        _check_images(self.images)
        _check_band_count(self.bands, int(self.images.shape[1]))
        n = len(self.images)
        self.labels = _checked_labels(self.labels)
        self.ids = np.asarray(self.ids)
        if len(self.labels) != n or len(self.ids) != n:
            raise GalmergeError(
                f"ImageSet sizes disagree: {n} images, {len(self.labels)} labels, "
                f"{len(self.ids)} ids; give one label and one id per image"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, torch.Tensor)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images at ``indices`` as a float32 tensor (reads from disk for lazy sets)."""
        if self.in_memory:
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
            return self.images.index_select(0, idx)  # type: ignore[union-attr]
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        data = np.asarray(self.images[idx[order]], dtype=np.float32)
        out = np.empty_like(data)
        out[order] = data
        return torch.from_numpy(out)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """A new set holding the rows at ``indices`` (loaded into memory)."""
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            images=self.batch(idx),
            labels=self.labels[torch.as_tensor(idx)],
            ids=self.ids[idx],
            ra=None if self.ra is None else self.ra[idx],
            dec=None if self.dec is None else self.dec[idx],
            meta=dict(self.meta),
        )

    def stored_meta(self) -> dict[str, Any]:
        """``meta`` with the preprocessing fields under their old keys: what a file stores, so
        older galmerge versions read it the same way."""
        out = dict(self.meta)
        for key in LEGACY_META_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def describe(self) -> str:
        labelled = int((self.labels >= 0).sum())
        mergers = int((self.labels == 1).sum())
        return (
            f"{self.survey}: {len(self)} images {self.channels}x{self.image_size}x"
            f"{self.image_size} bands {','.join(self.bands)}; {labelled} labelled, "
            f"{mergers} mergers"
        )
