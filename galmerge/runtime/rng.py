"""The caller's random number generators, kept: a job seeds the global ones for itself."""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def caller_rng_kept() -> Iterator[None]:
    """Restore Python's `random`, numpy's global and torch's generators (the CPU one, and the
    GPUs' when CUDA is in use) on exit: training and evaluation seed them for reproducible
    runs, which must not reset a notebook's or a script's own random draws."""
    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_before = torch.cuda.is_initialized()
    seed = torch.initial_seed()
    devices = list(range(torch.cuda.device_count())) if cuda_before else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if not cuda_before and torch.cuda.is_initialized():
            # CUDA started inside the job: its generators as torch.manual_seed(seed) leaves
            # them, which is what they would have drawn from (they are seeded lazily with it)
            torch.cuda.manual_seed_all(seed)


def keeps_caller_rng(func: F) -> F:
    """``func`` run under `caller_rng_kept` (its signature kept for ``inspect``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with caller_rng_kept():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
