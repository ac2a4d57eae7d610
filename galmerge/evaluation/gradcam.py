"""Grad-CAM (Selvaraju et al. 2017) on the backbone's last convolution, for any backbone, and the
model-randomisation sanity check of Adebayo et al. (2018, "Sanity Checks for Saliency Maps").

The maps explain the *logit difference* z_merger - z_non-merger, which keeps growing where the
probability has saturated at 1.000 (its gradient there is ~0, so maps of p are noise scaled up).
`evidence_maps` leaves the maps unscaled, so a figure can draw all of them on one scale: a weak
map then shows no contours instead of its own noise stretched to full height.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from galmerge.models.model import GalaxyClassifier

MERGER = 1


def last_conv_layer(model: GalaxyClassifier) -> nn.Conv2d:
    """The last ``nn.Conv2d`` in the backbone (module order is forward order in both built-ins)."""
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("backbone has no Conv2d layer; Grad-CAM needs a convolutional backbone")
    return convs[-1]


def cam_layer(model: GalaxyClassifier) -> nn.Module:
    """The layer whose output Grad-CAM reads: the module the backbone names in ``cam_layer``
    (the built-ins: the activation after the last convolution's BatchNorm, ResNet's whole
    ``layer4`` with its residual), else the last ``nn.Conv2d``. A bare convolution's output
    carries per-channel offsets that the BatchNorm after it removes, so its maps differ between
    models that compute the same function."""
    name = getattr(model.backbone, "cam_layer", None)
    if isinstance(name, str) and name:
        return model.backbone.get_submodule(name)
    return last_conv_layer(model)


def evidence_maps(
    model: GalaxyClassifier, x: torch.Tensor, target_class: int = MERGER
) -> torch.Tensor:
    """Unscaled Grad-CAM maps (N, H, W) >= 0 for ``target_class`` against the other classes.

    Per image: ReLU(sum_k a_k A_k), A the activations of `cam_layer` and a_k the spatial mean of
    d(z_target - mean of the other logits) / d A_k, upsampled bilinearly to the input size.
    """
    layer = cam_layer(model)
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
            others = torch.cat([logits[:, :target_class], logits[:, target_class + 1 :]], 1)
            margin = logits[:, target_class] - others.mean(1)
            model.zero_grad(set_to_none=True)
            margin.sum().backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu()


def grad_cam(model: GalaxyClassifier, x: torch.Tensor, target_class: int = MERGER) -> torch.Tensor:
    """Maps (N, H, W) in [0, 1], each scaled to its own maximum (see `evidence_maps`)."""
    cam = evidence_maps(model, x, target_class)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    return cam / peak


def common_scale(maps: torch.Tensor) -> float:
    """One scale for a whole figure: the 99.5th percentile of every map's pixels (a single hot
    pixel does not flatten the rest); 0 when every map is empty."""
    values = maps.flatten().float()
    if not len(values) or float(values.max()) <= 0:
        return 0.0
    return float(torch.quantile(values, 0.995).clamp_min(float(values.max()) * 1e-3))


def randomised_copy(model: GalaxyClassifier, seed: int = 0) -> GalaxyClassifier:
    """A copy of ``model`` with every layer re-initialised (the full model randomisation of
    Adebayo et al. 2018): what Grad-CAM shows for a network that learned nothing.

    The copy is re-initialised on the CPU from the CPU generator alone (the same weights on any
    device), then moved to the model's device; no random stream of the caller changes.
    """
    device = next(model.parameters()).device
    clone = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):  # the CPU generator, restored on exit
        torch.default_generator.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.reset_running_stats()
    return clone.to(device)


def randomisation_check(model: GalaxyClassifier, x: torch.Tensor, seed: int = 0) -> float:
    """Mean Spearman rank correlation between each image's map from ``model`` and from a
    randomised copy. Near 0: the maps depend on what the model learned (the check passes); near
    1: they mostly echo the image (edges, bright spots) and say little about the model."""
    ours = evidence_maps(model, x).flatten(1).numpy()
    theirs = evidence_maps(randomised_copy(model, seed), x).flatten(1).numpy()
    values = [_spearman(a, b) for a, b in zip(ours, theirs, strict=True)]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def strength_score_correlation(maps: torch.Tensor, margin: np.ndarray) -> float:
    """Spearman rank correlation, over images, between a map's total (unscaled) evidence and the
    model's logit difference. Maps that show what drives a 'merger' prediction are strongest
    where the model is surest of a merger; a correlation near or below 0 says they are not."""
    totals = maps.flatten(1).sum(1).numpy()
    if len(totals) < 3:
        return float("nan")
    return _spearman(totals, np.asarray(margin, dtype=np.float64))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")  # an empty map: no ranking to compare
    return float(np.corrcoef(ra, rb)[0, 1])
