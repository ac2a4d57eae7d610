"""torchrun / DistributedDataParallel support: gloo on CPU, nccl on CUDA, rank 0 writes.

Each rank takes a contiguous shard of every global batch; features, logits and labels are
all-gathered (differentiably) before the losses, so the loss — including batch-level DA terms
such as MMD — is the one a single process computes on the whole batch, and DDP's gradient mean
restores the single-process gradient. On CUDA BatchNorm layers become SyncBatchNorm. On CPU
(PyTorch's SyncBatchNorm needs a GPU) each rank normalises its batch shard with that shard's own
statistics, and after every step `average_buffers` sets the running statistics to their mean
over the ranks (DDP's ``broadcast_buffers`` is off there: it would copy rank 0's instead). The
running means kept (in best.pt and last.pt, and used by validation) are then those of the whole
batch, as one process keeps them; a running variance is the mean of the shards' variances,
which leaves out the spread of the shard means (small for shuffled batches).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist

from galmerge.errors import GalmergeError

T = TypeVar("T")


class SharedError(GalmergeError):
    """An error every rank of a multi-process run raises alike (rank 0's, handed on by
    `on_main`): the CLI prints it from rank 0 only."""


_group_formed = False


def group_formed() -> bool:
    """Whether this process ever joined a process group. An error raised before that comes
    from the command line, the config or the data specs, the same on every rank (the CLI
    prints it from rank 0 only); one raised after may be this rank's own (its GPU's memory)."""
    return _group_formed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> DistInfo:
    """Read torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK); a plain run is rank 0 of 1."""
    world = _env_int("WORLD_SIZE", "1")
    if world <= 1:
        return DistInfo()
    rank, local_rank = _env_int("RANK", "0"), _env_int("LOCAL_RANK", "0")
    if not 0 <= rank < world or local_rank < 0:
        raise GalmergeError(
            f"RANK={rank} LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world} (ranks are "
            f"0..{world - 1}); start the processes with torchrun, or unset these variables")
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def _env_int(name: str, default: str) -> int:
    raw = os.environ.get(name, default)
    try:
        return int(raw)
    except ValueError:
        raise GalmergeError(f"environment variable {name}={raw!r} is not a whole number; "
                            "torchrun sets it, or unset it for a single process") from None


def setup(info: DistInfo, device: torch.device) -> torch.device:
    """Join the process group; on CUDA each rank takes GPU ``LOCAL_RANK``."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise GalmergeError(f"distributed training supports cpu and cuda devices, not {device.type}")
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:  # torch's own error is a ValueError traceback
            raise GalmergeError(
                f"WORLD_SIZE={info.world} asks for {info.world} processes, but "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; start "
                "the processes with torchrun (torchrun --nproc_per_node N -m galmerge ...), or "
                "unset WORLD_SIZE and RANK for a single process")
        dist.init_process_group(backend=backend)
    global _group_formed
    _group_formed = True
    return device


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's shard in rank order, keeping the autograd graph."""
    if not info.enabled:
        return tensor
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # deprecated in favour of a private API; it is the public differentiable all-gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(tensor), dim=0)


def gather_plain(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All-gather without gradients (labels)."""
    if not info.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(info.world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (a non-finite loss stops all ranks)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Set every floating-point buffer of ``module`` (BatchNorm running statistics, and
    anything a strategy keeps) to its mean over the ranks, in one all-reduce.

    Summed in float64, so a float32 (or narrower) buffer that is the same on every rank stays
    bit for bit what it was (a float64 one may move by an ulp over 3 or more ranks). DDP offers
    only ``broadcast_buffers``, rank 0's copy; torch has no public call that averages module
    buffers."""
    if not info.enabled:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    with torch.no_grad():
        flat = torch.cat([b.reshape(-1).double() for b in buffers])
        dist.all_reduce(flat)
        flat /= info.world
        for b, mean in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            b.copy_(mean.view_as(b))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_object(obj: object, info: DistInfo) -> list[object] | None:
    """Every rank's ``obj`` in rank order on rank 0 (None on the others)."""
    if not info.enabled:
        return [obj]
    out: list[object] | None = [None] * info.world if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def on_main(fn: Callable[[], T], info: DistInfo) -> T | None:
    """``fn()`` on rank 0 only (a check or write of the run directory), its outcome on every
    rank: where it fails, rank 0 raises its error and every other rank a `SharedError` of the
    same text (the CLI prints rank 0's), instead of waiting at a collective rank 0 never reaches.
    Returns rank 0's result on rank 0, None elsewhere."""
    if not info.enabled:
        return fn()
    result: T | None = None
    failure: Exception | None = None
    if info.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the others
            failure = exc
    text = broadcast_object(None if failure is None else str(failure) or repr(failure), info)
    if failure is not None:
        raise failure
    if text is not None:
        raise SharedError(str(text))
    return result


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


_together: DistInfo | None = None


@contextlib.contextmanager
def loading_together(info: DistInfo) -> Iterator[None]:
    """A block in which every rank loads the same data in the same order (training's data):
    `from_main` inside it computes on rank 0 alone."""
    global _together
    before = _together
    _together = info if info.enabled and dist.is_initialized() else None
    try:
        yield
    finally:
        _together = before


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` (a file's hex digest, a check that returns nothing) on rank 0 alone inside
    `loading_together`, its result handed to every rank; ``compute()`` itself elsewhere.

    Where rank 0's ``compute()`` fails, rank 0 raises its error and every other rank a
    `SharedError` of the same text (`on_main`), instead of waiting at a broadcast rank 0 never
    reaches.
    """
    if _together is None:
        return compute()
    return cast(T, broadcast_object(on_main(compute, _together), _together))
