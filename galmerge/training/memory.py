"""A training step's memory, estimated before anything large is allocated.

A batch size far beyond the machine (``--batch-size 100000`` on a laptop) used to allocate until
the kernel killed the process. One forward pass of a single all-zero image in eval mode (no
random numbers drawn, no BatchNorm statistics updated: the run stays bit for bit the same)
measures the activations per image; a step keeps them for the backward pass and adds their
gradients, so the estimate is ``STEP_FACTOR`` times that per image forwarded.
"""

from __future__ import annotations

import torch
from torch import nn

from galmerge.errors import GalmergeError
from galmerge.runtime.devices import available_memory

STEP_FACTOR = 3  # saved activations + their gradients + the input and loss temporaries


def bytes_per_image(model: nn.Module, channels: int, size: int, device: torch.device) -> int:
    """Bytes of every leaf module's output for one image, plus the image itself."""
    sizes: list[int] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return sum(sizes) + channels * size * size * 4


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this run: the accelerator's free memory, or the host's."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":  # mps and others: no reliable free-memory figure
        return None
    return available_memory()


def check_batch_fits(
    model: nn.Module, channels: int, size: int, batch: int, images_per_step: int,
    device: torch.device,
) -> None:
    """A one-line error when one step would need more memory than is available."""
    free = available_bytes(device)
    if free is None:
        return
    per_image = bytes_per_image(model, channels, size, device) * STEP_FACTOR
    need = per_image * images_per_step
    if need <= free:
        return
    per_batch_image = max(1, images_per_step // max(1, batch))  # source (+ target) per batch slot
    fits = max(1, int(free // (per_image * per_batch_image)))
    raise GalmergeError(
        f"--batch-size {batch}: one training step needs about {need / 2**30:.1f} GiB on "
        f"{device.type} ({images_per_step} images of {channels}x{size}x{size}) but "
        f"{free / 2**30:.1f} GiB is free; use --batch-size {fits} or less"
    )
