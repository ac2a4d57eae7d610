"""Persistent, endless batch streams: one source batch and one target batch per training step.

Every pass over a pool is a fresh permutation drawn from a generator seeded by (seed, pass), so
the whole batch sequence is a pure function of (seed, pool size, batch size): the state to save
for ``--resume`` is one integer, the number of batches handed out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from galmerge.data.preprocess import normalise
from galmerge.plugin.imageset import ImageSet


class IndexStream:
    """Endless batches of positions ``0..n-1``; a batch that crosses a pass boundary continues
    into the next permutation, so every batch has exactly ``batch_size`` entries."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise ValueError("cannot draw batches from an empty pool")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.drawn = 0
        self._pass = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _permutation(self, pass_index: int) -> torch.Tensor:
        if pass_index != self._pass:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            self._perm = torch.randperm(self.n, generator=gen)
            self._pass = pass_index
        return self._perm

    def next(self) -> torch.Tensor:
        start = self.drawn * self.batch_size
        out = []
        need = self.batch_size
        while need:
            pass_index, pos = divmod(start, self.n)
            take = min(need, self.n - pos)
            out.append(self._permutation(pass_index)[pos : pos + take])
            start += take
            need -= take
        self.drawn += 1
        return out[0] if len(out) == 1 else torch.cat(out)

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drawn = int(state["drawn"])


def shard(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (ranks concatenated = the global batch)."""
    if world == 1:
        return indices
    return torch.tensor_split(indices, world)[rank]


class TensorBatches:
    """Batches from normalised images already on the device (the in-memory path)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        pool: torch.Tensor | None = None,
    ) -> None:
        # ``pool``: the rows of ``images`` to draw from (a split), so no copy of the split is made
        self.images, self.labels = images, labels
        self.pool = None if pool is None else pool.to(images.device)
        self.stream = IndexStream(len(images) if pool is None else len(pool), batch_size, seed)
        self.rank, self.world = rank, world

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = shard(self.stream.next(), self.rank, self.world).to(self.images.device)
        if self.pool is not None:
            idx = self.pool.index_select(0, idx)
        x = self.images.index_select(0, idx)
        y = None if self.labels is None else self.labels.index_select(0, idx)
        return x, y

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


class StreamingBatches:
    """Batches read from a lazy (HDF5) image set in chunks of ``chunk_batches`` batches: one
    sorted read per chunk instead of one per batch, normalised on arrival."""

    def __init__(
        self,
        imageset: ImageSet,
        pool: np.ndarray,
        spec: dict[str, Any],
        batch_size: int,
        seed: int,
        device: torch.device,
        with_labels: bool,
        rank: int = 0,
        world: int = 1,
        chunk_batches: int = 16,
    ) -> None:
        self.imageset, self.pool, self.spec = imageset, np.asarray(pool), spec
        self.device, self.with_labels = device, with_labels
        self.stream = IndexStream(len(self.pool), batch_size, seed)
        self.rank, self.world, self.chunk_batches = rank, world, chunk_batches
        self._buffer: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def _fill(self) -> None:
        batches = [
            shard(self.stream.next(), self.rank, self.world).numpy()
            for _ in range(self.chunk_batches)
        ]
        rows = self.pool[np.concatenate(batches)]
        unique, inverse = np.unique(rows, return_inverse=True)
        images = normalise(self.imageset.batch(unique).to(self.device), self.spec)
        labels = self.imageset.labels[torch.as_tensor(unique)].to(self.device)
        inverse_t = torch.as_tensor(inverse, device=self.device)
        start = 0
        for b in batches:
            sel = inverse_t[start : start + len(b)]
            start += len(b)
            y = labels.index_select(0, sel) if self.with_labels else None
            self._buffer.append((images.index_select(0, sel), y))
        self._buffer.reverse()

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self._buffer:
            self._fill()
        return self._buffer.pop()

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.stream.drawn - len(self._buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
        self._buffer.clear()
