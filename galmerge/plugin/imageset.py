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


@dataclass
class ImageSet:
    """N images (C, H, W), labels (1 merger, 0 non-merger, -1 unknown), ids and metadata.

    ``images`` is a float32 tensor when the set fits in memory, else a `LazyImages` reader.
    ``meta`` carries survey facts that preprocessing needs, e.g. ``stretch`` ("arcsinh" or
    "none"), ``stretch_scale`` and ``image_source`` ("frames" for calibrated FITS frames,
    "jpeg" for 8-bit colour cutouts).
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

    def __post_init__(self) -> None:
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

    def describe(self) -> str:
        labelled = int((self.labels >= 0).sum())
        mergers = int((self.labels == 1).sum())
        return (
            f"{self.survey}: {len(self)} images {self.channels}x{self.image_size}x"
            f"{self.image_size} bands {','.join(self.bands)}; {labelled} labelled, "
            f"{mergers} mergers"
        )
