"""Domain-specific BatchNorm statistics (DSBN: Chang et al. 2019, "Domain-Specific Batch
Normalization for Unsupervised Domain Adaptation"; AdaBN: Li et al. 2016).

With ``domain_batchnorm = "separate"`` a run that forwards target batches keeps two sets of
BatchNorm running statistics: the usual buffers (``running_mean``/``running_var``) hold the
source's, and ``target_running_mean``/``target_running_var``/``target_num_batches_tracked``
the target's. The affine weights are shared, unless the run asks for domain-specific ones
(``domain_batchnorm = "specific"``, DSBN's full form): then ``target_weight``/``target_bias``
are the target's affine parameters, trained only by the terms that read target images.
With ``target_encoder = "separate"`` every parameter of the backbone (convolutions, linear
layers and BatchNorm affine parameters alike) has a ``target_`` copy: the target's own encoder,
as in ADDA (Tzeng et al. 2017), trained only by the terms that read target images, while the
classifier head stays shared. Started from a source-only run (``init_from``) it is ADDA's
initialisation; the source path then sees exactly what a source-only run sees.
Training forwards each domain's batch with its own statistics; evaluation and classification
of a domain use that domain's running statistics (and parameters). One shared set would
evaluate every image with a mix of two distributions that no training batch had (it collapsed
source accuracy to chance in the defaults study).

The target buffers are ordinary module buffers, so they travel in ``state_dict`` and in the
checkpoint; a checkpoint without them is a model with one set, used for every domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

PREFIX = "target_"
STATS = ("running_mean", "running_var", "num_batches_tracked")
AFFINE = ("weight", "bias")
DOMAINS = ("source", "target")


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def _encoder_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in getattr(model, "backbone", model).modules() if m._parameters]


def add_target_statistics(model: nn.Module, affine: bool = False, encoder: bool = False) -> int:
    """Give every BatchNorm layer target running statistics, copied from its current ones, and
    with ``affine`` target affine parameters, copied likewise; with ``encoder`` every parameter
    of the backbone gets a target copy (idempotent); returns the number of BatchNorm layers."""
    norms = _norms(model)
    if encoder:
        for module in _encoder_modules(model):
            for name, param in list(module._parameters.items()):
                if param is not None and not name.startswith(PREFIX) \
                        and PREFIX + name not in module._parameters:
                    module.register_parameter(
                        PREFIX + name, nn.Parameter(param.detach().clone(),
                                                    requires_grad=param.requires_grad))
    for bn in norms:
        for name in STATS:
            if PREFIX + name not in bn._buffers:
                bn.register_buffer(PREFIX + name, bn._buffers[name].detach().clone())
        if affine and bn.affine:
            for name in AFFINE:
                if PREFIX + name not in bn._parameters:
                    bn.register_parameter(
                        PREFIX + name, nn.Parameter(bn._parameters[name].detach().clone()))
    return len(norms)


def has_target_statistics(model: nn.Module) -> bool:
    """Whether the model keeps a second set for the target (statistics or parameters)."""
    return any(any(k.startswith(PREFIX) for k in (*m._buffers, *m._parameters))
               for m in model.modules())


def state_has_target_statistics(state: dict[str, torch.Tensor]) -> bool:
    """Whether a ``state_dict`` (a checkpoint's ``model``) holds target statistics."""
    return any(key.endswith("." + PREFIX + STATS[0]) for key in state)


def state_has_target_affine(state: dict[str, torch.Tensor]) -> bool:
    """Whether a ``state_dict`` holds target affine parameters (``domain_batchnorm =
    "specific"``)."""
    return any(key.endswith("." + PREFIX + AFFINE[0]) for key in state)


def state_has_target_encoder(state: dict[str, torch.Tensor]) -> bool:
    """Whether a ``state_dict`` holds a target encoder (``target_encoder = "separate"``): target
    copies of parameters of layers other than BatchNorm."""
    marker = "." + PREFIX
    return any(marker in key and key.split(marker)[0] + ".running_mean" not in state
               for key in state)


def fit_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a state_dict) made to fit ``model``'s layout: target statistics (or affine
    parameters) dropped when the model keeps one set; filled from the source's when the model
    keeps two and the state has one (a checkpoint written before stop 23, or by a joint run)."""
    marker = "." + PREFIX
    ours = {k for k in model.state_dict() if marker in k}
    state = {k: v for k, v in state.items() if marker not in k or k in ours}
    for key in ours - set(state):
        own = key.replace(marker, ".")
        if own in state:
            state[key] = state[own]
    return state


def _swap(model: nn.Module) -> None:
    # a swap of the tensor objects, not a copy: cheap, and optimiser/DDP references stay valid
    for module in model.modules():
        for table in (module._buffers, module._parameters):
            for other in [k for k in table if k.startswith(PREFIX)]:
                name = other[len(PREFIX):]
                if name in table:
                    table[name], table[other] = table[other], table[name]


def _check(domain: str | None) -> None:
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain {domain!r}: use one of {', '.join(DOMAINS)}")


@contextmanager
def statistics(model: nn.Module, domain: str | None) -> Iterator[None]:
    """Within the block, BatchNorm layers use (and, in training mode, update) ``domain``'s
    running statistics. A no-op for ``None``, ``"source"`` or a model with one set."""
    _check(domain)
    swap = domain == "target" and has_target_statistics(model)
    if swap:
        _swap(model)
    try:
        yield
    finally:
        if swap:
            _swap(model)


@contextmanager
def fixed_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers in training mode normalise with their batch's
    statistics but leave their running statistics (and batch counters) as they are."""
    norms = _norms(model)
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def freeze_source_path(model: nn.Module) -> None:
    """Stop gradients into every parameter that is not a ``target_`` copy (the source encoder
    and the shared head), so only the target's own encoder can learn (ADDA's fixed source)."""
    for name, param in model.named_parameters():
        if not name.rpartition(".")[2].startswith(PREFIX):
            param.requires_grad_(False)


def select_statistics(model: nn.Module, domain: str) -> bool:
    """For inference on one domain only (classify, export): make ``domain``'s statistics the
    model's running statistics for good; returns whether anything changed."""
    _check(domain)
    if domain != "target" or not has_target_statistics(model):
        return False
    _swap(model)
    for module in model.modules():  # one set from now on: the other is dropped
        for table in (module._buffers, module._parameters):
            for other in [k for k in table if k.startswith(PREFIX)]:
                del table[other]
    return True
