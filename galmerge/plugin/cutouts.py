"""What a survey with an image service provides to `classify`: cutouts for catalog positions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class CutoutRequest:
    """One catalog row to cut: its position in the input and its sky position (degrees)."""

    row: int
    ra: float
    dec: float
    id: str


@dataclass
class CutoutResult:
    """A stamp (C, H, W) float32 in the units the model was trained on, or None and why."""

    row: int
    image: np.ndarray | None
    status: str  # "ok", "no-coverage", "fetch-failed: <reason>"  (classify adds "plugin-error")


class CutoutService(Protocol):
    """Fetches stamps; does its own bounded concurrency, retries and frame caching."""

    #: identifies the stamp kind (survey, bands, size, pixel scale, source) for cache keys
    cache_key: str

    def fetch(self, requests: Sequence[CutoutRequest]) -> Iterator[CutoutResult]:
        """Yield one result per request, in any order, with the request's ``row``; an "ok"
        one with a (C, size, size) float32 stamp. A row without a result or an "ok" stamp of
        another shape becomes ``plugin-error: ...``; a row not asked for, or answered twice,
        fails classify with ``PluginBug`` naming the plugin."""
        ...

    def summary(self) -> str:
        """One line for the end of a classify run (printed after the row counts): requests,
        retries and failures with their reasons, e.g. `RetryingClient.summary`."""
        ...

    def close(self) -> None: ...


class ClientStatus:
    """For a cutout service that fetches through ``self.client`` (a `RetryingClient`): its
    client's ``unreachable`` (the circuit breaker opened) and ``failing`` (the failure budget
    ``max_failed_requests`` was spent), each None or the line saying what stopped fetching.
    ``classify`` reads both after a run and then exits non-zero with that line."""

    client: Any

    @property
    def unreachable(self) -> str | None:
        """The host that stopped answering (the circuit breaker opened), else None."""
        return self.client.unreachable

    @property
    def failing(self) -> str | None:
        """What failed when the failure budget stopped fetching, else None."""
        return self.client.failing
