"""Grad-CAM (Selvaraju et al. 2017) on the backbone's last convolution, for any backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from galmerge.model import GalaxyClassifier

MERGER = 1


def last_conv_layer(model: GalaxyClassifier) -> nn.Conv2d:
    """The last ``nn.Conv2d`` in the backbone (module order is forward order in both built-ins)."""
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("backbone has no Conv2d layer; Grad-CAM needs a convolutional backbone")
    return convs[-1]


def grad_cam(model: GalaxyClassifier, x: torch.Tensor, target_class: int = MERGER) -> torch.Tensor:
    """Maps (N, H, W) in [0, 1] of where ``x`` (already normalised) drives the class logit.

    Per image: ReLU(sum_k a_k A_k) with A the last conv activations and a_k the spatial mean of
    d logit / d A_k, upsampled bilinearly to the input size and scaled to its maximum.
    """
    layer = last_conv_layer(model)
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        store["act"] = output
        # a tensor hook: module backward hooks misbehave with the in-place ReLUs that follow
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    was_training = model.training
    model.eval()  # BatchNorm statistics and dropout as at inference
    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inp = x.detach().clone().requires_grad_(True)  # ensures a graph even if frozen
            _, logits = model(inp)
            model.zero_grad(set_to_none=True)
            logits[:, target_class].sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (cam / peak).cpu()
