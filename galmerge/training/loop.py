"""The trainer behind `galmerge train` and `galmerge.train(...)`.

One step = one source batch + one target batch from persistent streams, one forward pass over
both, loss = CE(source) + Σ weight_i · term_i, one Adam step over the model and every strategy
module, one one-cycle scheduler step. Target labels never reach the loss or model selection;
they are only reported (``target_val_accuracy`` and the target test metrics).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from galmerge import distributed as ddp
from galmerge import rundir
from galmerge.batches import StreamingBatches, TensorBatches
from galmerge.config import cli_overrides, resolve_config
from galmerge.errors import GalmergeError
from galmerge.imageset import ImageSet
from galmerge.metrics import binary_metrics
from galmerge.model import GalaxyClassifier, build_model, read_checkpoint, save_checkpoint
from galmerge.plugins import get_plugin_manager
from galmerge.preprocess import compute_spec, normalise
from galmerge.progress import Progress, results_table
from galmerge.splits import domain_splits
from galmerge.strategy_api import StepInputs, StrategyContext

ORACLE = "oracle_target_accuracy"
DEFAULT_SELECT = "source_val_loss"
EVAL_BATCH = 512


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Domain:
    """One domain's image set, splits, preprocessing spec and (when in memory) device tensors."""

    name: str
    imageset: ImageSet
    splits: dict[str, np.ndarray]
    spec: dict[str, Any]
    images: torch.Tensor | None  # normalised, on the device; None for lazy sets

    def features_input(self, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        if self.images is not None:
            return self.images.index_select(0, torch.as_tensor(idx, device=device))
        return normalise(self.imageset.batch(idx).to(device), self.spec)


def _load(spec: str | ImageSet, role: str) -> tuple[ImageSet, str]:
    if isinstance(spec, ImageSet):
        return spec, spec.survey
    from galmerge.datasets import load_imageset

    return load_imageset(str(spec)), str(spec)


def _prepare_domain(
    name: str, imageset: ImageSet, splits: dict[str, np.ndarray], device: torch.device
) -> Domain:
    spec = compute_spec(imageset, splits["train"], name)
    images = None
    if imageset.in_memory:
        # Normalise once and keep the whole set on the device: no per-step host work.
        images = normalise(imageset.images.to(device), spec)  # type: ignore[union-attr]
    return Domain(name, imageset, splits, spec, images)


def _labelled(imageset: ImageSet, idx: np.ndarray) -> np.ndarray:
    labels = imageset.labels.numpy()[idx]
    return idx[labels >= 0]


# --------------------------------------------------------------------------------------------
# model + losses


class TrainStep(nn.Module):
    """Model and strategy modules in one module, so DDP sees (and syncs) every parameter."""

    def __init__(
        self,
        model: GalaxyClassifier,
        strategies: nn.ModuleDict,
        weights: dict[str, float],
        dist: ddp.DistInfo,
        autocast: bool,
        forward_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.strategies = strategies
        self.weights = weights
        self.dist = dist
        self.autocast = autocast
        # torch.compile'd view of ``model`` (same parameters); kept out of the module tree
        self.__dict__["_forward_model"] = forward_model

    def forward(
        self, xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        net = self._forward_model if self._forward_model is not None else self.model
        x = torch.cat([xs, xt])
        if self.autocast:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                feats, logits = net(x)
        else:
            feats, logits = net(x)
        feats, logits = feats.float(), logits.float()
        n = len(xs)
        fs, ft, zs, zt = feats[:n], feats[n:], logits[:n], logits[n:]
        if self.dist.enabled:
            fs, ft = ddp.gather(fs, self.dist), ddp.gather(ft, self.dist)
            zs, zt = ddp.gather(zs, self.dist), ddp.gather(zt, self.dist)
            ys = ddp.gather_plain(ys, self.dist)
        ce = F.cross_entropy(zs, ys)
        step = StepInputs(
            source_features=fs,
            source_logits=zs,
            source_labels=ys,
            target_features=ft,
            target_logits=zt,
            progress=progress,
        )
        total = ce
        terms: dict[str, torch.Tensor] = {"ce": ce}
        diagnostics: dict[str, torch.Tensor] = {}
        for name, module in self.strategies.items():
            out = module(step)
            for key, value in out.items():
                if key.startswith("_"):
                    diagnostics[key.lstrip("_")] = value.detach().float()
                    continue
                label = key if key not in terms else f"{name}_{key}"
                weighted = self.weights[name] * value
                terms[label] = weighted
                total = total + weighted
        return total, terms, diagnostics


def _build_strategies(
    config: Mapping[str, Any], feature_dim: int, total_steps: int, device: torch.device
) -> tuple[nn.ModuleDict, dict[str, float]]:
    pm = get_plugin_manager()
    context = StrategyContext(
        feature_dim=feature_dim, num_classes=2, total_steps=total_steps, device=device
    )
    modules = nn.ModuleDict()
    weights: dict[str, float] = {}
    for name, options in config["strategies"].items():
        record = pm.get("strategies", name)
        module = record.build(context, dict(options))
        modules[name] = module.to(device)
        weights[name] = float(options.get("weight", 1.0))
    return modules, weights


def _init_from(model: GalaxyClassifier, source: str) -> None:
    payload = read_checkpoint(source)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        detail = next(
            (line.strip() for line in str(exc).splitlines() if "size mismatch" in line
             or "Missing key" in line or "Unexpected key" in line),
            str(exc).splitlines()[0],
        )
        raise GalmergeError(
            f"--init-from {source}: its weights do not fit this model ({detail}); use a run "
            f"with the same backbone, backbone options, channels and image size"
        ) from None


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def _predict(
    model: GalaxyClassifier, domain: Domain, idx: np.ndarray, device: torch.device, autocast: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    was = model.training
    model.eval()
    feats, logits = [], []
    for start in range(0, len(idx), EVAL_BATCH):
        x = domain.features_input(idx[start : start + EVAL_BATCH], device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if autocast:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                f, z = model(x)
        else:
            f, z = model(x)
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    model.train(was)
    if not feats:
        return torch.empty(0, model.out_features), torch.empty(0, 2)
    return torch.cat(feats), torch.cat(logits)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    keep = labels >= 0
    if not bool(keep.any()):
        return math.nan
    return float((logits[keep].argmax(1) == labels[keep]).float().mean())


def _selection_module() -> Any:
    try:
        from galmerge import selection
    except ImportError:
        return None
    return selection


def _score_directions() -> dict[str, str]:
    directions = {DEFAULT_SELECT: "min", ORACLE: "max"}
    selection = _selection_module()
    if selection is not None:
        directions.update(dict(getattr(selection, "SCORES", {})))
    return directions


def _validate(
    model: GalaxyClassifier,
    source: Domain,
    target: Domain,
    device: torch.device,
    autocast: bool,
) -> dict[str, float]:
    s_idx = source.splits["val"]
    t_idx = target.splits["val"]
    fs, zs = _predict(model, source, s_idx, device, autocast)
    ft, zt = _predict(model, target, t_idx, device, autocast)
    ys = source.imageset.labels[torch.as_tensor(s_idx)]
    yt = target.imageset.labels[torch.as_tensor(t_idx)]
    losses_s = F.cross_entropy(zs, ys, reduction="none") if len(ys) else torch.empty(0)
    row = {
        "source_val_loss": float(losses_s.mean()) if len(ys) else math.nan,
        "source_val_accuracy": _accuracy(zs, ys),
        # reported only; never used for selection unless --select-by oracle_target_accuracy
        "target_val_accuracy": _accuracy(zt, yt),
    }
    selection = _selection_module()
    if selection is not None and hasattr(selection, "label_free_scores"):
        hidden = torch.full_like(yt, -1)  # target labels stay out of every label-free score
        scores = selection.label_free_scores(
            selection.SplitOutputs(fs, zs, ys, losses_s),
            selection.SplitOutputs(ft, zt, hidden, None),
        )
        for name, value in scores.items():
            row[f"score_{name}"] = float(value)
    return row


def _selection_value(row: Mapping[str, float], select_by: str) -> float:
    if select_by == DEFAULT_SELECT:
        return row["source_val_loss"]
    if select_by == ORACLE:
        return row["target_val_accuracy"]
    return row.get(f"score_{select_by}", math.nan)


def _test_metrics(
    model: GalaxyClassifier, domain: Domain, device: torch.device, autocast: bool
) -> dict[str, float]:
    idx = domain.splits["test"]
    _, logits = _predict(model, domain, idx, device, autocast)
    labels = domain.imageset.labels.numpy()[idx]
    p = torch.softmax(logits, dim=1)[:, 1].numpy()
    return binary_metrics(labels, p)


# --------------------------------------------------------------------------------------------
# state for checkpoints (weights_only-loadable: tensors, dicts, lists, primitives)


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# the API


def train(
    source: str | ImageSet | None = None,
    target: str | ImageSet | None = None,
    *,
    strategy: str | None = None,
    backbone: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    run_dir: str | Path | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    preset: str | None = None,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
    patience: int | None = None,
    weight_decay: float | None = None,
    select_by: str | None = None,
    strategy_options: Mapping[str, Mapping[str, Any]] | None = None,
    sets: list[str] | tuple[str, ...] = (),
    backbone_options: Mapping[str, Any] | None = None,
    compile: bool | None = None,
    quiet: bool = False,
    max_steps_per_epoch: int | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """Train a classifier with domain adaptation; returns the run summary (summary.json).

    ``source``/``target`` are survey specs (``synthetic:illustris``, ``hdf5:PATH``) or
    `ImageSet` objects. Settings resolve as defaults < ``preset`` < ``config`` < arguments.
    ``resume`` continues the run directory's last checkpoint with its saved config.
    """
    dist = ddp.from_environment()
    flags: dict[str, Any] = {
        "strategy": strategy,
        "backbone": backbone,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": device,
        "preset": preset,
        "init_from": None if init_from is None else str(init_from),
        "patience": patience,
        "weight_decay": weight_decay,
        "select_by": select_by,
        "compile": compile,
        "max_steps_per_epoch": max_steps_per_epoch,
        "checkpoint_every": checkpoint_every,
    }
    source_set = target_set = None
    if isinstance(source, ImageSet):
        source_set, flags["source"] = source, source.survey
    elif source is not None:
        flags["source"] = str(source)
    if isinstance(target, ImageSet):
        target_set, flags["target"] = target, target.survey
    elif target is not None:
        flags["target"] = str(target)

    resume_state: dict[str, Any] | None = None
    if resume is not None:
        out_dir = Path(resume)
        if not (out_dir / rundir.CONFIG).is_file() or not (out_dir / rundir.LAST).is_file():
            raise GalmergeError(
                f"--resume {out_dir}: no config.toml and last.pt there; pass a run directory "
                f"that trained at least one checkpoint"
            )
        changed = [
            k for k, v in flags.items() if v is not None and k not in ("device", "source", "target")
        ]
        if changed or sets or strategy_options or backbone_options or config or preset:
            raise GalmergeError(
                f"--resume continues a run with its saved config; drop "
                f"{', '.join(changed) or 'the extra settings'} (only --device and --quiet may "
                f"change)"
            )
        saved = rundir.read_config(out_dir)
        layer = {"device": device} if device is not None else {}
        cfg = resolve_config(cli=layer, file=saved)
        if source_set is None and flags.get("source") not in (None, cfg["source"]):
            raise GalmergeError(f"--resume: the run's source is {cfg['source']}, not {source}")
        resume_state = read_checkpoint(out_dir / rundir.LAST)
    else:
        cli_layer = cli_overrides(flags, sets)
        if strategy_options:
            for name, opts in strategy_options.items():
                cli_layer.setdefault("strategies", {}).setdefault(name, {}).update(dict(opts))
        if backbone_options:
            cli_layer.setdefault("backbone_options", {}).update(dict(backbone_options))
        cfg = resolve_config(cli=cli_layer, file=config)
        out_dir = (
            Path(run_dir)
            if run_dir is not None
            else rundir.default_run_dir(cfg["source"], cfg["target"], cfg["strategy"])
        )
    directions = _score_directions()
    if cfg["select_by"] not in directions:
        raise GalmergeError(
            f"unknown --select-by '{cfg['select_by']}'; available: {', '.join(sorted(directions))}"
        )
    return _run(cfg, out_dir, source_set, target_set, dist, quiet, resume_state, directions)


def _run(
    cfg: dict[str, Any],
    out_dir: Path,
    source_set: ImageSet | None,
    target_set: ImageSet | None,
    dist: ddp.DistInfo,
    quiet: bool,
    resume_state: dict[str, Any] | None,
    directions: dict[str, str],
) -> dict[str, Any]:
    from galmerge.devices import resolve_device

    t_start = time.time()
    quiet = quiet or not dist.is_main
    device = ddp.setup(dist, resolve_device(cfg["device"]))
    # one run directory for all ranks (a default name holds a timestamp that may differ)
    out_dir = Path(str(ddp.broadcast_object(str(out_dir), dist)))
    try:
        return _train_loop(
            cfg, out_dir, source_set, target_set, dist, quiet, resume_state, directions, device,
            t_start,
        )
    finally:
        ddp.teardown(dist)


def _train_loop(
    cfg: dict[str, Any],
    out_dir: Path,
    source_set: ImageSet | None,
    target_set: ImageSet | None,
    dist: ddp.DistInfo,
    quiet: bool,
    resume_state: dict[str, Any] | None,
    directions: dict[str, str],
    device: torch.device,
    t_start: float,
) -> dict[str, Any]:
    if dist.is_main:
        # Never a silent device choice: one line even with --quiet (stderr keeps stdout clean).
        extra = f" x{dist.world} processes" if dist.enabled else ""
        print(f"galmerge train: device {device}{extra} (asked: {cfg['device']})", file=sys.stderr)
    seed = int(cfg["seed"])
    batch = int(cfg["batch_size"])
    if batch % dist.world:
        raise GalmergeError(
            f"--batch-size {batch} does not split evenly over {dist.world} processes; use a "
            f"multiple of {dist.world}"
        )
    _seed_everything(seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True

    if source_set is None:
        source_set, _ = _load(cfg["source"], "source")
    if target_set is None:
        target_set, _ = _load(cfg["target"], "target")
    if source_set.channels != target_set.channels or source_set.image_size != target_set.image_size:
        raise GalmergeError(
            f"source {cfg['source']} has {source_set.channels}x{source_set.image_size}x"
            f"{source_set.image_size} images but target {cfg['target']} has "
            f"{target_set.channels}x{target_set.image_size}x{target_set.image_size}; "
            f"pick surveys with the same bands and cutout size"
        )
    splits = domain_splits(len(source_set), len(target_set), seed)
    s_splits = {k: _labelled(source_set, v) for k, v in splits["source"].items()}
    if len(s_splits["train"]) == 0:
        raise GalmergeError(f"source {cfg['source']} has no labelled training images")
    source = _prepare_domain(cfg["source"], source_set, s_splits, device)
    target = _prepare_domain(cfg["target"], target_set, splits["target"], device)

    steps_per_epoch = max(1, len(source.splits["train"]) // batch)
    if cfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(cfg["max_steps_per_epoch"]))
    total_steps = int(cfg["epochs"]) * steps_per_epoch

    model = build_model(
        cfg["backbone"], source_set.channels, source_set.image_size, 2, cfg["backbone_options"]
    )
    if cfg["init_from"] and resume_state is None:
        _init_from(model, cfg["init_from"])
    model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        if dist.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    strategies, weights = _build_strategies(cfg, model.out_features, total_steps, device)
    forward_model = torch.compile(model) if cfg["compile"] else None
    step_module: nn.Module = TrainStep(model, strategies, weights, dist, cuda, forward_model)
    params = [p for p in step_module.parameters() if p.requires_grad]
    opt_cfg = cfg["optimizer"]
    optimizer = torch.optim.Adam(
        params,
        lr=float(cfg["lr"]),
        betas=(float(opt_cfg["betas"][0]), float(opt_cfg["betas"][1])),
        eps=float(opt_cfg["eps"]),
        amsgrad=bool(opt_cfg["amsgrad"]),
        weight_decay=float(cfg["weight_decay"]),
    )
    sch = cfg["schedule"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=float(cfg["lr"]),
        total_steps=total_steps,
        pct_start=float(sch["pct_start"]),
        div_factor=float(sch["div_factor"]),
        final_div_factor=float(sch["final_div_factor"]),
        cycle_momentum=False,  # keep the paper's Adam betas fixed
    )
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(
            step_module,
            device_ids=[device.index] if cuda else None,
            find_unused_parameters=False,
        )

    if source.images is not None:
        src_batches: Any = TensorBatches(
            source.images, source_set.labels.to(device), batch, seed * 101 + 1, dist.rank,
            dist.world, pool=torch.as_tensor(source.splits["train"]),
        )
    else:
        src_batches = StreamingBatches(
            source_set, source.splits["train"], source.spec, batch, seed * 101 + 1, device,
            True, dist.rank, dist.world,
        )
    if target.images is not None:
        # no labels: target labels never reach training
        tgt_batches: Any = TensorBatches(
            target.images, None, batch, seed * 101 + 2, dist.rank, dist.world,
            pool=torch.as_tensor(target.splits["train"]),
        )
    else:
        tgt_batches = StreamingBatches(
            target_set, target.splits["train"], target.spec, batch, seed * 101 + 2, device,
            False, dist.rank, dist.world,
        )

    # -- state (fresh or resumed) --------------------------------------------------------
    rows: list[dict[str, Any]] = []
    epoch, step_in_epoch, global_step = 1, 0, 0
    train_seconds, train_images = 0.0, 0  # over the whole run, resumed sessions included
    best: dict[str, Any] = {"value": math.nan, "epoch": 0, "bad_epochs": 0, "stopped": False}
    acc: dict[str, torch.Tensor] = {}
    if resume_state is not None:
        ts = resume_state["training_state"]
        model.load_state_dict(resume_state["model"])
        strategies.load_state_dict(ts["strategies"])
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        src_batches.load_state_dict(ts["source_batches"])
        tgt_batches.load_state_dict(ts["target_batches"])
        rows = [dict(r) for r in ts["rows"]]
        epoch, step_in_epoch, global_step = ts["epoch"], ts["step_in_epoch"], ts["global_step"]
        best = dict(ts["best"])
        acc = {k: v.to(device) for k, v in ts["accumulators"].items()}
        train_seconds = float(ts.get("train_seconds", 0.0))
        train_images = int(ts.get("train_images", 0))
        _set_rng_state(ts["rng"], device)
    else:
        if dist.is_main:
            rundir.prepare_new(out_dir)
        ddp.barrier(dist)

    preprocess = {"source": source.spec, "target": target.spec}

    def payload(training_state: dict[str, Any] | None, at_epoch: int) -> dict[str, Any]:
        from galmerge import __version__

        return {
            "galmerge_version": __version__,
            "backbone": cfg["backbone"],
            "backbone_options": dict(cfg["backbone_options"]),
            "in_channels": source_set.channels,
            "image_size": source_set.image_size,
            "num_classes": 2,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "temperature": 1.0,
            "preprocess": preprocess,
            "config": cfg,
            "epoch": at_epoch,
            "training_state": training_state,
        }

    def training_state(ep: int, sie: int) -> dict[str, Any]:
        return {
            "epoch": ep,
            "step_in_epoch": sie,
            "global_step": global_step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "strategies": {k: v.detach().cpu() for k, v in strategies.state_dict().items()},
            "source_batches": src_batches.state_dict(),
            "target_batches": tgt_batches.state_dict(),
            "rng": _rng_state(device),
            "best": dict(best),
            "rows": [dict(r) for r in rows],
            "accumulators": {k: v.detach().cpu() for k, v in acc.items()},
            "train_seconds": train_seconds,
            "train_images": train_images,
        }

    def save_last(ep: int, sie: int) -> None:
        """last.pt to resume at step ``sie`` of epoch ``ep``; its ``epoch`` counts the epochs
        the weights have completed (ep - 1), as best.pt's does."""
        if dist.is_main:
            save_checkpoint(out_dir / rundir.LAST, payload(training_state(ep, sie), ep - 1))

    tb = None
    if dist.is_main:
        if resume_state is None:  # a resumed run keeps its config.toml as written
            rundir.write_config(out_dir, cfg)
        if resume_state is None or not (out_dir / rundir.ENV).exists():
            env = rundir.environment(device)
            env["world_size"] = dist.world
            rundir.write_json(out_dir / rundir.ENV, env)
        tb = rundir.TensorBoard(out_dir, purge_step=len(rows) + 1 if resume_state else None)

    progress = Progress(quiet, int(cfg["epochs"]), steps_per_epoch)
    progress.info(
        f"{source_set.describe()}\n{target_set.describe()}\n"
        f"strategy {cfg['strategy']}, backbone {cfg['backbone']}, {steps_per_epoch} steps/epoch, "
        f"batch {batch}, run directory {out_dir}"
    )
    progress.start((epoch - 1) * steps_per_epoch + step_in_epoch, epoch)
    check_every = _nonfinite_check_interval(device)
    ckpt_every = int(cfg["checkpoint_every"])
    select_by = cfg["select_by"]
    direction = directions[select_by]
    patience = int(cfg["patience"])
    images_per_step = 2 * batch

    term_keys: set[str] = set(k[5:] for r in rows for k in r if k.startswith("loss_"))
    term_keys.discard("total")
    stopped_early = bool(best.get("stopped", False))
    step_lr = float(optimizer.param_groups[0]["lr"])
    try:
        while epoch <= int(cfg["epochs"]) and not stopped_early:
            step_module.train()
            t0 = time.perf_counter()
            n_steps_here = 0
            while step_in_epoch < steps_per_epoch:
                xs, ys = src_batches.next()
                xt, _ = tgt_batches.next()
                if cuda:
                    xs = xs.contiguous(memory_format=torch.channels_last)
                    xt = xt.contiguous(memory_format=torch.channels_last)
                progress_frac = global_step / max(1, total_steps - 1)
                total, terms, diagnostics = step_module(xs, ys, xt, progress_frac)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                step_lr = float(optimizer.param_groups[0]["lr"])  # the lr this step used
                scheduler.step()
                global_step += 1
                step_in_epoch += 1
                n_steps_here += 1
                term_keys.update(terms)
                for key, value in (("total", total), *terms.items(), *diagnostics.items()):
                    v = value.detach().float()
                    acc[key] = acc[key] + v if key in acc else v.clone()
                acc["_steps"] = acc.get("_steps", torch.zeros((), device=device)) + 1
                saving = bool(ckpt_every) and global_step % ckpt_every == 0 and (
                    step_in_epoch < steps_per_epoch
                )
                # always checked before a save: a NaN state must never replace the last good one
                if saving or global_step % check_every == 0 or step_in_epoch == steps_per_epoch:
                    bad = not bool(torch.isfinite(acc["total"]).item())
                    if ddp.any_flag(bad, dist, device):
                        _non_finite(out_dir, epoch, step_in_epoch)
                if saving:
                    save_last(epoch, step_in_epoch)
                progress.step(
                    (epoch - 1) * steps_per_epoch + step_in_epoch, epoch,
                    None if step_in_epoch % 20 else
                    {k: float(acc[k] / acc["_steps"]) for k in ("total", *terms)},
                )
            if cuda:
                torch.cuda.synchronize(device)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            train_images += n_steps_here * images_per_step

            steps = float(acc.pop("_steps"))
            row: dict[str, Any] = {"epoch": epoch, "loss_total": float(acc.pop("total")) / steps}
            for key, value in acc.items():
                prefix = "loss" if key in term_keys else "diag"
                row[f"{prefix}_{key}"] = float(value) / steps
            acc = {}
            row.update(_validate(model, source, target, device, cuda))
            row["lr"] = step_lr  # at the epoch's last step
            row["images_per_s"] = (
                n_steps_here * images_per_step / epoch_seconds if epoch_seconds > 0 else math.nan
            )
            # rank 0's numbers decide for every rank (BatchNorm buffers may differ per rank)
            row = ddp.broadcast_object(row, dist)  # type: ignore[assignment]
            rows.append(row)

            value = _selection_value(row, select_by)
            improved = _better(value, best["value"], direction)
            if improved:
                best = {"value": value, "epoch": epoch, "bad_epochs": 0, "stopped": False}
                if dist.is_main:
                    save_checkpoint(out_dir / rundir.BEST, payload(None, epoch))
            else:
                best["bad_epochs"] += 1
            step_in_epoch = 0
            stop = patience > 0 and best["bad_epochs"] >= patience
            best["stopped"] = stop
            next_epoch = epoch + 1
            save_last(next_epoch, 0)
            if dist.is_main:
                rundir.write_metrics(out_dir, rows)
                assert tb is not None
                tb.log(row, epoch)
            progress.epoch_done(row, improved)
            epoch = next_epoch
            if stop:
                stopped_early = True
                progress.info(
                    f"early stop: {select_by} did not improve for {patience} epochs "
                    f"(best epoch {best['epoch']})"
                )
                break
    finally:
        progress.stop()
        if tb is not None:
            tb.close()

    ddp.barrier(dist)
    summary: dict[str, Any] | None = None
    if dist.is_main:
        if not (out_dir / rundir.BEST).exists():
            # No epoch gave a finite selection value: keep the last weights as "best".
            save_checkpoint(out_dir / rundir.BEST, payload(None, len(rows)))
            best["epoch"] = len(rows)
        best_payload = read_checkpoint(out_dir / rundir.BEST)
        model.load_state_dict(best_payload["model"])
        summary = {
            "source": cfg["source"],
            "target": cfg["target"],
            "strategy": cfg["strategy"],
            "backbone": cfg["backbone"],
            "seed": seed,
            "epochs_run": len(rows),
            "best_epoch": int(best["epoch"]),
            "train_images_per_s": train_images / train_seconds if train_seconds > 0 else None,
            "metrics": {
                "source_test": _test_metrics(model, source, device, cuda),
                "target_test": _test_metrics(model, target, device, cuda),
            },
            "select_by": select_by,
            "best_selection_value": best["value"],
            "stopped_early": stopped_early,
            "device": str(device),
            "world_size": dist.world,
            "run_dir": str(out_dir),
            "duration_s": time.time() - t_start,
        }
        rundir.write_json(out_dir / rundir.SUMMARY, summary)
        results_table(summary, quiet)
    summary = ddp.broadcast_object(summary, dist)  # type: ignore[assignment]
    assert summary is not None
    return rundir._json_safe(summary)


def _better(value: float, best: float, direction: str) -> bool:
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value < best if direction == "min" else value > best


def _nonfinite_check_interval(device: torch.device) -> int:
    """Steps between checks that the loss is finite: every step on the CPU; on accelerators
    every 25 (each check waits for the device), and always before a checkpoint is written."""
    return 1 if device.type == "cpu" else 25


def _non_finite(out_dir: Path, epoch: int, step: int) -> None:
    last = out_dir / rundir.LAST
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    raise GalmergeError(
        f"training stopped: the loss became non-finite (NaN/inf) at epoch {epoch}, step {step}; "
        f"{kept}; try a lower --lr or smaller strategy weights"
    )
