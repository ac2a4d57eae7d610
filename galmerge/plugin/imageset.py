"""The one in-memory form of a labelled image set, shared by every survey and the trainer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch


class LazyImages(Protocol):
    """Images that stay on disk (an HDF5 dataset): indexable by sorted integer arrays."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: np.ndarray) -> np.ndarray: ...


#: the ImageSet fields older versions kept as ``meta`` keys
LEGACY_META_KEYS = ("image_source", "stretch", "stretch_scale", "storage_dtype")
_DEFAULTS: dict[str, Any] = {"image_source": "frames", "stretch": None, "stretch_scale": None,
                             "storage_dtype": None}


@dataclass
class ImageSet:
    """N images (C, H, W), labels (1 merger, 0 non-merger, -1 unknown), ids and metadata.

    ``images`` is a float32 tensor when the set fits in memory, else a `LazyImages` reader.
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
        self.bands = tuple(str(b) for b in self.bands)
        if self.pixel_scale_arcsec is not None:
            self.pixel_scale_arcsec = float(self.pixel_scale_arcsec)
        if self.stretch_scale is not None:
            self.stretch_scale = float(self.stretch_scale)
        for key in ("survey", "image_source", "stretch", "storage_dtype"):
            if isinstance(getattr(self, key), str):  # np.str_ -> str; anything else as given
                setattr(self, key, str(getattr(self, key)))
        n = len(self.images)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        self.ids = np.asarray(self.ids)
        if len(self.labels) != n or len(self.ids) != n:
            raise ValueError(
                f"ImageSet sizes disagree: {n} images, {len(self.labels)} labels, "
                f"{len(self.ids)} ids"
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
