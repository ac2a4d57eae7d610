"""The trainer: a ``Trainer`` built from a ``Plan`` runs epochs of steps and writes the run.

One step = one source batch (+ one target batch when a strategy needs it) from persistent
streams, one forward pass (see ``step.TrainStep``), one Adam step over the model and every
strategy module, one scheduler step. Target labels never reach the loss or model selection;
they are only reported (``target_val_accuracy`` and the target test metrics).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from galmerge.config import rundir
from galmerge.errors import GalmergeError
from galmerge.models import domain_norm
from galmerge.models import shift as shift_score
from galmerge.models.model import build_model, read_checkpoint, save_checkpoint
from galmerge.plugin import versions
from galmerge.runtime import distributed as ddp
from galmerge.runtime.progress import Progress
from galmerge.scores.collapse import collapse_warning, run_warnings
from galmerge.training import checkpoints, optim
from galmerge.training.data import Domain, batch_stream
from galmerge.training.evaluate import predict, split_metrics, validate
from galmerge.training.memory import check_batch_fits
from galmerge.training.plan import Plan
from galmerge.training.state import TrainingState, rng_state, seed_rank, set_rng_state
from galmerge.training.step import TrainStep, build_strategies, strategy_records
from galmerge.training.stopping import update_selection, update_stopping

OnEpoch = Callable[[dict[str, Any]], None]


class Trainer:
    """Model, strategies, optimiser, schedule, batch streams and state of one run."""

    def __init__(
        self, plan: Plan, source: Domain, target: Domain, init: dict[str, Any] | None = None,
        resume: dict[str, Any] | None = None,
    ) -> None:
        """``init``: the ``init_from`` checkpoint; ``resume``: the last.pt this run continues
        (`load` takes its state), whose plugin versions a failing build names."""
        self.plan, self.source, self.target = plan, source, target
        self.state = TrainingState()
        # which plugin versions build this run: written into each checkpoint and env.json
        self.plugin_versions = checkpoints.plugin_record(plan.config)
        with self._trained_with(resume, init):
            self._build_modules(init)
        imageset = source.imageset
        # per process: each rank forwards its share of the batch
        check_batch_fits(
            self.model, imageset.channels, imageset.image_size, plan.batch,
            plan.images_per_step // plan.dist.world, plan.device,
        )
        self._build_optimiser()
        seed, dist, device = plan.seed, plan.dist, plan.device
        self.source_batches = batch_stream(source, plan.batch, seed * 101 + 1, device, dist, True)
        # no labels: target labels never reach training
        self.target_batches = batch_stream(target, plan.batch, seed * 101 + 2, device, dist, False)
        self.preprocess = {"source": source.spec, "target": target.spec}
        self.term_keys: set[str] = set()
        self.resumed = False
        self.step_lr = self._base_lr()
        # every rank built the same weights from the run's seed; from here each process of a
        # torchrun run draws its own dropout masks (rank 0 keeps the seed's stream, so a
        # single-process run is unchanged)
        seed_rank(plan.seed, dist.rank)

    # -- building ------------------------------------------------------------------------

    def _build_modules(self, init: dict[str, Any] | None) -> None:
        plan, cfg, imageset = self.plan, self.plan.config, self.source.imageset
        model = build_model(
            cfg["backbone"], imageset.channels, imageset.image_size, 2, cfg["backbone_options"]
        )
        domain_stats = plan.needs_target and not plan.joint_batchnorm
        layout = {"affine": cfg["domain_batchnorm"] == "specific",
                  "encoder": cfg["target_encoder"] == "separate"}
        if domain_stats:  # DSBN: one set of BatchNorm running statistics per domain (ADDA:
            domain_norm.add_target_statistics(model, **layout)  # of every backbone parameter)
        if init is not None:
            checkpoints.load_init_weights(model, init, cfg["init_from"], cfg["backbone"])
        model.to(plan.device)
        if plan.cuda:
            model = model.to(memory_format=torch.channels_last)
            if plan.dist.enabled:
                kept = model.state_dict()  # SyncBatchNorm conversion drops extra buffers
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                if domain_stats:
                    domain_norm.add_target_statistics(model, **layout)
                    model.load_state_dict(kept)
        # after the SyncBatchNorm conversion, whose new target_ copies take their source's flag
        frozen_source = cfg.get("source_path") == "frozen" and layout["encoder"]
        if frozen_source:  # ADDA's fixed source encoder and classifier: only target_ copies learn
            domain_norm.freeze_source_path(model)
        self.model = model
        self.strategies, weights = build_strategies(
            cfg, model.out_features, plan.total_steps, plan.device
        )
        self.init_loaded = (
            checkpoints.load_init_strategies(
                self.strategies, init, fresh=cfg.get("init_fresh_strategies") or ())
            if init is not None else []
        )
        forward_model = torch.compile(model) if cfg["compile"] else None
        self.step_module: nn.Module = TrainStep(
            model, self.strategies, weights, plan.dist, plan.cuda, forward_model,
            joint=plan.joint_batchnorm, source_head=cfg["target_encoder"] == "separate",
            frozen_source=frozen_source,
        )

    def _trained_with(self, resume: dict[str, Any] | None, init: dict[str, Any] | None
                      ) -> contextlib.AbstractContextManager[None]:
        """`versions.trained_with` for the checkpoint this run continues or starts from: a
        resumed run was built by every kind of component, an ``init_from`` one gives only its
        model's and strategies' weights."""
        if resume is not None:
            return versions.trained_with(resume, str(self.plan.out_dir / rundir.LAST))
        if init is not None:
            return versions.trained_with(init, str(self.plan.config["init_from"]),
                                         ("backbone", "strategy"))
        return contextlib.nullcontext()

    def _build_optimiser(self) -> None:
        plan, cfg = self.plan, self.plan.config
        named = [(n, p) for n, p in self.step_module.named_parameters() if p.requires_grad]
        declared = optim.declared_multipliers(self.model, self.strategies)
        resolved = optim.resolve_multipliers(
            declared, cfg.get("lr_multipliers") or {}, [n for n, _ in named]
        )
        cfg["lr_multipliers"] = resolved  # config.toml records every multiplier in force
        groups = optim.parameter_groups(named, resolved)
        self.group_multipliers = [m for m, _ in groups]
        self.optimizer = optim.build_optimizer(groups, cfg)
        self.scheduler = optim.build_scheduler(
            self.optimizer, cfg, plan.total_steps, plan.steps_per_epoch
        )
        if not self._target_path_trained():
            # the target's own parameters (DSBN's affine ones, ADDA's encoder) learn only from
            # terms that read the target, and no strategy here adds one (adabn): their gradient
            # stays None. Out of autograd they are out of DDP too, whose reduction waits for
            # every parameter that requires a gradient; the optimiser keeps them (its state and
            # last.pt are unchanged; Adam skips a parameter without gradient either way)
            for name, param in self.step_module.named_parameters():
                if name.rpartition(".")[2].startswith(domain_norm.PREFIX):
                    param.requires_grad_(False)
        if plan.dist.enabled and any(p.requires_grad for p in self.step_module.parameters()):
            from torch.nn.parallel import DistributedDataParallel

            self.step_module = DistributedDataParallel(
                self.step_module,
                device_ids=[plan.device.index] if plan.cuda else None,
                find_unused_parameters=False,
                # CUDA: SyncBatchNorm keeps the ranks' statistics equal; CPU: `step` averages
                # them (broadcasting would keep rank 0's shards' only)
                broadcast_buffers=plan.cuda,
            )

    def _target_path_trained(self) -> bool:
        """Whether a loss term can reach the target's own parameters: some strategy reads the
        target batch and adds terms (a module with ``adds_terms = False`` adds none)."""
        records = {r.name: r for r in strategy_records(self.plan.config)}
        return any(getattr(records.get(name), "needs_target", True)
                   and getattr(module, "adds_terms", True)
                   for name, module in self.strategies.items())

    def _base_lr(self) -> float:
        """The schedule's lr now, before multipliers: a group's lr over its multiplier, of the
        first group whose multiplier is not 0 (a frozen group's lr says nothing); 0 when every
        group is frozen, as nothing learns."""
        for group, mult in zip(self.optimizer.param_groups, self.group_multipliers, strict=True):
            if mult > 0:
                return float(group["lr"]) / mult
        return 0.0

    # -- state and checkpoints -----------------------------------------------------------

    def components(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "strategies": {k: v.detach().cpu() for k, v in self.strategies.state_dict().items()},
            "source_batches": self.source_batches.state_dict(),
            "target_batches": self.target_batches.state_dict(),
            "rng": rng_state(self.plan.device),
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a last.pt payload (written by this or an earlier galmerge)."""
        with self._trained_with(checkpoint, None):
            ts = self._load_state(checkpoint)
        self.state = TrainingState.from_dict(ts, self.plan.device)
        self.term_keys = {k[5:] for r in self.state.rows for k in r if k.startswith("loss_")}
        self.term_keys.discard("total")
        set_rng_state(ts["rng"], self.plan.device)
        rank, ranks = self.plan.dist.rank, ts.get("rng_ranks")
        if rank > 0:  # its own stream; a last.pt without it (one process, older): a fresh one
            if isinstance(ranks, list) and rank < len(ranks):
                set_rng_state(ranks[rank], self.plan.device)
            else:
                seed_rank(self.plan.seed, rank)
        self.resumed = True

    def _load_state(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """Weights and training state of a last.pt into this run; returns its training state."""
        try:  # a last.pt of another model (replaced, or another galmerge) is one line
            ts = checkpoint["training_state"]
            # a last.pt of a "separate" run from before per-domain statistics: one set, both
            self.model.load_state_dict(domain_norm.fit_state(self.model, checkpoint["model"]))
            self.strategies.load_state_dict(ts["strategies"])
            self.optimizer.load_state_dict(ts["optimizer"])
            self.scheduler.load_state_dict(ts["scheduler"])
            self.source_batches.load_state_dict(ts["source_batches"])
            self.target_batches.load_state_dict(ts["target_batches"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise GalmergeError(
                f"--resume: {self.plan.out_dir / rundir.LAST} does not fit this run's model and "
                f"training state ({_mismatch(exc)}); restore it, or start the run afresh"
            ) from None
        return ts

    def _payload(self, epoch: int, training_state: dict[str, Any] | None) -> dict[str, Any]:
        imageset = self.source.imageset
        return checkpoints.payload(
            self.plan.config, self.model, self.strategies, self.preprocess,
            (imageset.channels, imageset.image_size), epoch, training_state,
            self.plugin_versions,
        )

    def save_last(self) -> None:
        """last.pt to resume at the state's position; its ``epoch`` counts the epochs the
        weights have completed (state.epoch - 1), as best.pt's does. Every rank calls it:
        under torchrun each rank's RNG state is gathered into ``rng_ranks``."""
        dist = self.plan.dist
        ranks = ddp.gather_object(rng_state(self.plan.device), dist)
        if dist.is_main:
            components = self.components()
            if dist.enabled:
                components["rng_ranks"] = ranks
            state = self.state.to_dict(self.plan.steps_per_epoch, components)
            save_checkpoint(self.plan.out_dir / rundir.LAST, self._payload(self.state.epoch - 1, state))

    def save_best(self, epoch: int) -> None:
        if self.plan.dist.is_main:
            save_checkpoint(self.plan.out_dir / rundir.BEST, self._payload(epoch, None))

    # -- one step ------------------------------------------------------------------------

    def step(self) -> None:
        """One optimiser step on the next batches; adds its terms to the epoch's sums."""
        plan, state = self.plan, self.state
        xs, ys = self.source_batches.next()
        xt = self.target_batches.next()[0] if plan.needs_target else None
        if plan.cuda:
            xs = xs.contiguous(memory_format=torch.channels_last)
            xt = None if xt is None else xt.contiguous(memory_format=torch.channels_last)
        progress = state.global_step(plan.steps_per_epoch) / max(1, plan.total_steps - 1)
        total, terms, diagnostics = self.step_module(xs, ys, xt, progress)
        self.optimizer.zero_grad(set_to_none=True)
        # nothing has a gradient where no term reaches a trainable parameter, as in AdaBN as
        # Li et al. 2016 wrote it (adabn, the target's own encoder, source_path=frozen): only
        # the target's BatchNorm running statistics move, and the optimiser step is a no-op
        if total.requires_grad:
            total.backward()
        try:
            self.optimizer.step()
        except RuntimeError:  # a step size past float32 (huge lr x multipliers)? asked of the
            if not _step_size_overflows(self.optimizer):  # numbers, never of torch's wording
                raise
            _non_finite(plan, state.epoch, state.step_in_epoch + 1)
        if plan.dist.enabled and not plan.cuda:  # the whole batch's running statistics
            ddp.average_buffers(self.step_module, plan.dist)
        self.step_lr = self._base_lr()  # the lr this step used
        self.scheduler.step()
        state.step_in_epoch += 1
        self.term_keys.update(terms)
        acc = state.accumulators
        for key, value in (("total", total), *terms.items(), *diagnostics.items()):
            v = value.detach().float()
            acc[key] = acc[key] + v if key in acc else v.clone()

    def _guard(self) -> None:
        """Check the loss is finite (always before a save) and write mid-epoch checkpoints."""
        plan, state = self.plan, self.state
        global_step = state.global_step(plan.steps_per_epoch)
        every = plan.checkpoint_every
        saving = bool(every) and global_step % every == 0 and (
            state.step_in_epoch < plan.steps_per_epoch
        )
        # always checked before a save: a NaN state must never replace the last good one
        if saving or global_step % plan.check_every == 0 or (
            state.step_in_epoch == plan.steps_per_epoch
        ):
            bad = not bool(torch.isfinite(state.accumulators["total"]).item())
            if ddp.any_flag(bad, plan.dist, plan.device):
                _non_finite(plan, state.epoch, state.step_in_epoch)
        if saving:
            self.save_last()

    # -- one epoch -----------------------------------------------------------------------

    def run_epoch(self, progress: Progress) -> tuple[dict[str, Any], bool]:
        """The rest of the current epoch, then validation; returns (metrics row, improved)."""
        plan, state = self.plan, self.state
        self.step_module.train()
        t0 = time.perf_counter()
        first = state.step_in_epoch
        show = not getattr(progress, "quiet", False)
        while state.step_in_epoch < plan.steps_per_epoch:
            self.step()
            self._guard()
            sie = state.step_in_epoch
            losses = None
            if show and sie % 20 == 0:
                losses = {k: float(state.accumulators[k] / sie) for k in ("total", *self._shown)}
            progress.step((state.epoch - 1) * plan.steps_per_epoch + sie, state.epoch, losses)
        if plan.cuda:
            torch.cuda.synchronize(plan.device)
        seconds = time.perf_counter() - t0
        images = (plan.steps_per_epoch - first) * plan.images_per_step
        state.train_seconds += seconds
        state.train_images += images
        row = self._epoch_row(images / seconds if seconds > 0 else math.nan)
        state.rows.append(row)
        improved = update_selection(state.best, row, plan.select_by)
        if improved:
            self.save_best(state.epoch)
        update_stopping(state.best, row, plan.stop_by, plan.early_stopping, plan.patience)
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        self.save_last()
        return row, improved

    @property
    def _shown(self) -> list[str]:
        return [k for k in self.state.accumulators if k in self.term_keys]

    def _epoch_row(self, images_per_s: float) -> dict[str, Any]:
        plan, state = self.plan, self.state
        acc, steps = state.accumulators, float(plan.steps_per_epoch)
        row: dict[str, Any] = {"epoch": state.epoch, "loss_total": float(acc.pop("total")) / steps}
        for key, value in acc.items():
            prefix = "loss" if key in self.term_keys else "diag"
            row[f"{prefix}_{key}"] = float(value) / steps
        state.accumulators = {}
        wants_batch = "source_val_batch_loss" in (plan.select_by, plan.stop_by)
        seed = plan.seed * 1_000_003 + state.epoch if wants_batch else None
        row.update(validate(self.model, self.source, self.target, plan.device, plan.cuda, seed))
        row["lr"] = self.step_lr  # at the epoch's last step
        row["images_per_s"] = images_per_s
        # rank 0's numbers decide for every rank: best.pt and stopping must be one decision
        return ddp.broadcast_object(row, plan.dist)  # type: ignore[return-value]

    # -- the run -------------------------------------------------------------------------

    def fit(self, progress: Progress, on_epoch: OnEpoch | None = None) -> None:
        """Epochs until the planned number or an early stop; metrics, TensorBoard, callback."""
        plan, state = self.plan, self.state
        tb = None
        if plan.dist.is_main:
            purge = len(state.rows) + 1 if self.resumed else None
            tb = rundir.TensorBoard(plan.out_dir, purge_step=purge)
        progress.start(state.global_step(plan.steps_per_epoch), state.epoch)
        try:
            while state.epoch <= plan.epochs and not state.best.stopped:
                row, improved = self.run_epoch(progress)
                if plan.dist.is_main:
                    rundir.write_metrics(plan.out_dir, state.rows)
                    assert tb is not None
                    tb.log(row, int(row["epoch"]))
                progress.epoch_done(row, improved)
                warning = collapse_warning(state.rows, plan.needs_target)
                if warning is not None:  # under the epoch line it is about
                    progress.warn(warning)
                if state.best.stopped:
                    progress.info(_stop_message(plan, state.best.epoch))
                if on_epoch is not None and plan.dist.is_main:
                    on_epoch(dict(row))
        finally:
            progress.stop()
            if tb is not None:
                tb.close()

    def finish(self, t_start: float) -> dict[str, Any] | None:
        """best.pt's test metrics as summary.json (rank 0; other ranks get None)."""
        plan, state = self.plan, self.state
        if not plan.dist.is_main:
            return None
        if not (plan.out_dir / rundir.BEST).exists():
            # No epoch gave a finite selection value: keep the last weights as "best".
            self.save_best(len(state.rows))
            state.best.epoch = len(state.rows)
        best = read_checkpoint(plan.out_dir / rundir.BEST)
        self.model.load_state_dict(best["model"])
        shift_sha = self._fit_shift_stats(best.get("sha256"))
        cfg, train_seconds = plan.config, state.train_seconds
        return {
            "source": cfg["source"],
            "target": cfg["target"],
            "strategy": cfg["strategy"],
            "backbone": cfg["backbone"],
            "seed": plan.seed,
            "epochs_run": len(state.rows),
            "best_epoch": int(state.best.epoch),
            "best_sha256": best.get("sha256"),  # verified on every load of best.pt
            "train_images_per_s": state.train_images / train_seconds if train_seconds > 0 else None,
            "metrics": {
                "source_test": split_metrics(self.model, self.source, plan.device, plan.cuda),
                "target_test": split_metrics(self.model, self.target, plan.device, plan.cuda),
            },
            "select_by": plan.select_by,
            "best_selection_value": state.best.value,
            "stopped_early": state.best.stopped,
            "device": str(plan.device),
            "world_size": plan.dist.world,
            "run_dir": str(plan.out_dir),
            # wall clock of this session only (since a resume; without a source-only stage);
            # train_seconds: the training steps of every session of the run
            "duration_s": time.time() - t_start,
            "train_seconds": train_seconds,
            "warnings": run_warnings(state.rows, int(state.best.epoch), plan.needs_target),
            shift_score.SUMMARY_KEY: shift_sha,  # verified on every load of shift_stats.npz
        }

    def _fit_shift_stats(self, checkpoint_sha256: str | None) -> str:
        """`galmerge.models.shift`: one feature pass over the source training split (and its
        validation split, for the threshold) with the selected weights."""
        plan, source = self.plan, self.source

        def features(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            f, _ = predict(self.model, source, idx, plan.device, plan.cuda)
            return f.numpy(), source.imageset.labels[torch.as_tensor(idx)].numpy()

        return shift_score.fit_run(features, np.asarray(source.splits["train"]),
                                   np.asarray(source.splits["val"]), plan.out_dir,
                                   checkpoint_sha256)


def _mismatch(exc: Exception) -> str:
    """The telling line of a state-dict mismatch."""
    if isinstance(exc, KeyError):
        return f"no '{exc.args[0]}'"
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return next((ln.strip() for ln in lines if "size mismatch" in ln or "Missing key" in ln
                 or "Unexpected key" in ln), lines[0])[:160]


def _step_size_overflows(optimizer: torch.optim.Optimizer) -> bool:
    """Whether Adam's step size for some group, lr / (1 - beta1^t) at the step t that just
    failed, lies past what its parameters' dtype holds: torch refuses to convert that scalar
    (a RuntimeError). Asked only after a step raised, so training pays nothing for it."""
    for group in optimizer.param_groups:
        beta1 = float(group.get("betas", (0.0,))[0])
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if step is None:  # no gradient yet: this group made no step
                continue
            size = abs(float(group["lr"])) / (1.0 - beta1 ** max(1.0, float(step)))
            if not size <= torch.finfo(param.dtype).max:
                return True
            break  # one step count per group: its parameters step together
    return False


def _stop_message(plan: Plan, best_epoch: int) -> str:
    if plan.early_stopping == "deepmerge":
        return (
            f"early stop: the graded counter on {plan.stop_by} passed {plan.patience} "
            f"(best epoch {best_epoch})"
        )
    return (
        f"early stop: {plan.stop_by} did not improve for {plan.patience} epochs "
        f"(best epoch {best_epoch})"
    )


def _non_finite(plan: Plan, epoch: int, step: int) -> None:
    last = plan.out_dir / rundir.LAST
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    raise GalmergeError(
        f"training stopped: the loss became non-finite (NaN/inf) at epoch {epoch}, step {step}; "
        f"{kept}; try a lower --lr or smaller strategy weights"
    )
