"""``galmerge.train(...)``: settings -> resolved config -> a ``Trainer`` run in a run directory."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from galmerge.config import paths, rundir
from galmerge.config.legacy import config_path, fill_legacy, setting_name
from galmerge.config.resolve import cli_overrides, resolve_config
from galmerge.data.datasets import spec_text
from galmerge.errors import GalmergeError
from galmerge.models.model import read_checkpoint
from galmerge.plugin import versions
from galmerge.plugin.imageset import ImageSet
from galmerge.plugin.strategy_api import StrategyOutputError
from galmerge.runtime import distributed as ddp
from galmerge.runtime.progress import Progress, results_table
from galmerge.runtime.rng import keeps_caller_rng
from galmerge.scores import selection
from galmerge.training import checkpoints
from galmerge.training.data import check_finite, load_imageset, prepare_domains
from galmerge.training.plan import make_plan
from galmerge.training.state import seed_everything
from galmerge.training.step import needs_source_stage, needs_target, source_only_layer
from galmerge.training.stopping import RULES
from galmerge.training.trainer import OnEpoch, Trainer


@keeps_caller_rng  # the run seeds the global generators; the caller's are restored after it
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
    on_epoch: OnEpoch | None = None,
) -> dict[str, Any]:
    """Train a classifier with domain adaptation; returns the run summary (summary.json).

    ``source``/``target`` are survey specs (``synthetic:illustris``, ``hdf5:PATH``) or
    `ImageSet` objects. Settings resolve as defaults < ``preset`` < ``config`` < arguments.
    ``resume`` continues the run directory's last checkpoint with its saved config.
    ``on_epoch(row)`` is called on rank 0 after each epoch's metrics row is written; an
    exception it raises ends the run (files closed, last.pt resumable) and propagates.
    """
    _check_arguments(strategy, strategy_options, backbone_options, sets, on_epoch)
    flags: dict[str, Any] = {
        "strategy": strategy, "backbone": backbone, "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "seed": seed, "device": device, "preset": preset,
        "init_from": None if init_from is None else str(init_from), "patience": patience,
        "weight_decay": weight_decay, "select_by": select_by, "compile": compile,
        "max_steps_per_epoch": max_steps_per_epoch, "checkpoint_every": checkpoint_every,
    }
    sets_given: dict[str, ImageSet] = {}
    for role, value in (("source", source), ("target", target)):
        if isinstance(value, ImageSet):
            check_finite(value, role)  # else "loss became non-finite ... lower --lr"
            sets_given[role], flags[role] = value, value.survey
        elif value is not None:
            flags[role] = spec_text(value, role)
    extras = bool(sets or strategy_options or backbone_options or config or preset)
    for folder in (run_dir, resume):
        if folder is not None:
            rundir.check_name(Path(folder))
    if resume is not None:
        if run_dir is not None and Path(run_dir).resolve() != Path(resume).resolve():
            raise GalmergeError(f"--resume {resume} continues that run in its own folder; drop "
                                f"--run-dir {run_dir} (or copy the run there and resume the "
                                "copy)")
        resumed_from = rundir.file_stamp(Path(resume) / rundir.LAST)  # (checked under the lock)
        cfg, out_dir, resume_state, moved = _resume_config(Path(resume), flags, extras,
                                                           source, sets_given)
    else:
        cli_layer = cli_overrides(flags, sets)
        for name, opts in (strategy_options or {}).items():
            cli_layer.setdefault("strategies", {}).setdefault(name, {}).update(dict(opts))
        if backbone_options:
            cli_layer.setdefault("backbone_options", {}).update(dict(backbone_options))
        record = isinstance(config, str | Path) and rundir.is_run_record(Path(config))
        cfg = resolve_config(cli=cli_layer, file=config, legacy=record)
        if record:  # a run's config.toml: what it lacks takes the values its run trained with
            _note_legacy(Path(str(config)), cli_layer, cfg, quiet)
        typed = cfg["source"], cfg["target"]  # a default run directory's name: as typed
        if isinstance(config, str | Path):
            cfg = _paths_read_back(cfg, Path(config), cli_layer, record)
        # recorded absolute: the run resumes, evaluates and is reused from any folder
        cfg = paths.absolute(cfg, (*(r for r in paths.SPEC_KEYS if r not in sets_given),
                                   "init_from"))
        if flags["init_from"] is None and isinstance(config, str | Path):
            cfg = _other_runs_stage(cfg, Path(config), quiet)  # a run's config.toml reused
            cfg = _study_stage(cfg, Path(config), quiet)  # a tune study's best.toml reused
        if isinstance(config, str | Path) and Path(config).name == rundir.CONFIG:
            rundir.note_rerun_environment(Path(config).parent, cfg.get("seed"), quiet)
        if record:  # the data its run trained on, read again: other data under the same name?
            _warn_changed_data(Path(str(config)).parent, cfg, cli_layer)
        out_dir = (
            Path(run_dir) if run_dir is not None
            else rundir.default_run_dir(*typed, cfg["strategy"], seed=int(cfg["seed"]))
        )
        resume_state = resumed_from = None
        moved = {}
    for role in ("source", "target"):  # before any folder is made
        if role not in sets_given:
            rundir.refuse_credentials(cfg.get(role), f"--{role}")
    _check_rules(cfg)
    return _run(cfg, out_dir, sets_given, quiet, resume_state, on_epoch, resumed_from, moved)


def _check_arguments(strategy: str | None, strategy_options: Any, backbone_options: Any,
                     sets: Any, on_epoch: Any) -> None:
    """Arguments of the wrong shape, each a one-line error before any work (else a TypeError
    deep inside, a string split into characters, or a failure after a whole epoch)."""
    if strategy_options is not None:
        if not isinstance(strategy_options, Mapping):
            raise GalmergeError(f"strategy_options must map strategy names to their options, "
                                f"e.g. {{'mmd': {{'weight': 0.5}}}}; got {strategy_options!r}")
        for name, options in strategy_options.items():
            if not isinstance(options, Mapping):
                first = str(strategy or "dann").split("+")[0]
                raise GalmergeError(
                    f"strategy_options maps each strategy name to its options, got {name!r}: "
                    f"{options!r}; nest them under the strategy, e.g. strategy_options="
                    f"{{{first!r}: {dict(strategy_options)!r}}}")
    if backbone_options is not None and not isinstance(backbone_options, Mapping):
        raise GalmergeError(f"backbone_options must be a dict of options, e.g. "
                            f"{{'dropout': 0.3}}; got {backbone_options!r}")
    if isinstance(sets, str) or not isinstance(sets, list | tuple) or not all(
            isinstance(text, str) for text in sets):
        example = [sets] if isinstance(sets, str) else ["mmd.weight=0.5"]
        raise GalmergeError(f"sets must be a list of 'KEY=VALUE' strings, e.g. sets={example!r}; "
                            f"got {sets!r}")
    if on_epoch is not None and not callable(on_epoch):
        raise GalmergeError(f"on_epoch must be a function called with each epoch's metrics row, "
                            f"e.g. on_epoch=print; got {on_epoch!r}")


# what a run writes into its config.toml beyond the settings it was given (the device it ran on,
# the multipliers its modules declared, the numbers "auto" observation measured): not compared
# when deciding whether a recorded source-only stage is the one a config would train
FILLED_BY_RUN = ("device", "lr_multipliers", "observe")
# settings a reused source-only stage must share with the run that starts from it
STAGE_KEYS = ("source", "target", "backbone", "seed", "epochs", "batch_size", "lr",
              "weight_decay", "max_steps_per_epoch", "backbone_options")


def _data_record(imageset: ImageSet) -> dict[str, Any]:
    """One domain's data as this run read it: survey, size, bands, pixel scale and the short
    scalar facts its survey recorded (``ImageSet.meta``: renderer version, cache file...)."""
    facts = {k: v for k, v in imageset.meta.items()
             if isinstance(v, str | int | float | bool) and len(str(v)) <= 300}
    return {"survey": imageset.survey, "images": len(imageset), "bands": list(imageset.bands),
            "pixel_scale_arcsec": imageset.pixel_scale_arcsec, "meta": facts}


def _stage_difference(stage: Path, cfg: Mapping[str, Any],
                      kept_from: Mapping[str, Any] | None = None
                      ) -> tuple[str, Any, Any] | None:  # fmt: skip
    """(setting, the stage's value, ``cfg``'s) of the first setting in which the source-only
    run recorded in ``stage`` differs from the one ``cfg`` would train (`source_only_layer`;
    `STAGE_KEYS` first, what runs fill in not compared), or None when it is that run. With
    ``kept_from`` (the config file ``cfg`` was read from), only settings in which ``cfg``'s
    stage differs from that file's are compared."""
    # paths that older runs recorded as typed compare as they read from here (absolute)
    earlier = resolve_config(file=paths.absolute(rundir.read_config(stage)), legacy=True)
    expected = resolve_config(file=source_only_layer(dict(cfg, init_from="")))
    if kept_from is not None:
        before = resolve_config(file=source_only_layer(dict(paths.absolute(kept_from),
                                                            init_from="")))
        earlier = {k: earlier.get(k) if expected.get(k) != before.get(k) else expected.get(k)
                   for k in {*earlier, *expected}}
    return _first_difference(earlier, expected)


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]
                      ) -> tuple[str, Any, Any] | None:
    """(setting, value in ``a``, value in ``b``) of the first resolved setting in which two
    configs differ (`STAGE_KEYS` first; what a run fills in itself not compared), or None."""
    for key in (*STAGE_KEYS, *sorted(set(a) | set(b))):
        if key not in FILLED_BY_RUN and a.get(key) != b.get(key):
            return key, a.get(key), b.get(key)
    return None


def _other_runs_stage(cfg: dict[str, Any], config: Path, quiet: bool) -> dict[str, Any]:
    """``cfg`` without the ``init_from`` a run's config.toml records for its own source-only
    stage (``OTHER/source_only/best.pt``) when that stage is not the one this run would train
    (`source_only_layer` of this config: another seed, schedule, optimiser...) or is gone (the
    run moved, or a relative path read from another folder): ``train --config
    runs/da/config.toml --seed 2`` must train seed 2's own stage, not start from seed 0's."""
    init = str(cfg.get("init_from") or "")
    stage = Path(init).parent
    own = (config.resolve().parent.name, rundir.SOURCE_STAGE, rundir.BEST)
    if (not init or cfg.get("target_encoder") != "separate"
            or Path(init).parts[-3:] != own):  # an init_from given on purpose stays
        return cfg
    why = None
    if not Path(init).is_file():
        why = "is not there (the run moved, or the path is relative to another folder)"
    elif (stage / rundir.CONFIG).is_file():
        diff = _stage_difference(stage, cfg)
        if diff is not None:
            why = (f"is another run's source-only stage ({diff[0]} = {diff[1]!r} there, "
                   f"{diff[2]!r} here)")
    if why is None:
        return cfg
    return _drop_stage(cfg, init, why, quiet)


def _paths_read_back(cfg: dict[str, Any], config: Path, cli_layer: Mapping[str, Any],
                     record: bool) -> dict[str, Any]:
    """``cfg`` with the relative paths it took from the file ``config`` (not those given here)
    made what the run's files say they named (`paths.with_recorded_files`, a run's config.toml
    from before paths were recorded absolute); one still relative and not there from here is a
    one-line error naming the folder it is relative to, except the run's own source-only stage
    (`_other_runs_stage` trains this run's own instead). A config file of the user's own keeps
    its paths relative to the folder galmerge runs in."""
    from galmerge.training.tuning import BEST_TOML

    if not record and config.name != BEST_TOML:  # a file of the user's: paths from here
        return cfg
    from_file = [k for k in (*paths.SPEC_KEYS, "init_from") if k not in cli_layer]
    if record:
        cfg = {**cfg, **paths.with_recorded_files({k: cfg[k] for k in from_file},
                                                  config.parent)}
    own = (config.resolve().parent.name, rundir.SOURCE_STAGE, rundir.BEST)
    for key in from_file:
        part = paths.missing_relative(cfg, key)
        if part is None or key == "init_from" and Path(part).parts[-3:] == own:
            continue
        started = "its run was started in" if record else "its study was started in"
        flag = "--" + key.replace("_", "-")
        raise GalmergeError(
            f"--config {config}: {key} = {cfg[key]!r} is a path relative to the folder "
            f"{started}, and there is no {part} here; run from that folder, or pass {flag} "
            "with the path from here")
    return cfg


def _drop_stage(cfg: dict[str, Any], init: str, why: str, quiet: bool) -> dict[str, Any]:
    if not quiet:
        print(f"galmerge train: note: init_from {init} {why}; this run trains its own (pass "
              "--init-from to start from a given checkpoint)", file=sys.stderr)
    return dict(cfg, init_from="")


def _study_stage(cfg: dict[str, Any], config: Path, quiet: bool) -> dict[str, Any]:
    """``cfg`` without the ``init_from`` a tune study's ``best.toml`` (or a trial's config.toml)
    records (the study's source-only reference, ``--reference``, or the trial's own stage) when
    a setting given here beside ``--config`` (``--seed 2``, another ``--source``...) makes the
    source-only stage this run would train differ from the recorded one. Settings the file
    itself holds are not counted: a trial's searched lr, weight decay and epochs are its
    adaptation's, not its reference's."""
    from galmerge.training.tuning import BEST_TOML

    init = str(cfg.get("init_from") or "")
    folder = config.resolve().parent
    study = folder if config.name == BEST_TOML else folder.parent.parent
    if (not init or cfg.get("target_encoder") != "separate" or not (study / "trials").is_dir()
            or not (folder == study or folder.parent.name == "trials")):  # fmt: skip
        return cfg
    stage = Path(init).parent
    if not (stage / rundir.CONFIG).is_file():
        return cfg
    diff = _stage_difference(stage, cfg, kept_from=resolve_config(
        file=config, legacy=rundir.is_run_record(config)))
    if diff is None:
        return cfg
    return _drop_stage(cfg, init, f"is the study's source-only start for {diff[0]} = "
                       f"{diff[1]!r}, not {diff[2]!r}", quiet)


def _source_stage(
    cfg: dict[str, Any], out_dir: Path, sets_given: Mapping[str, ImageSet], quiet: bool,
    dist: ddp.DistInfo, device: torch.device,
) -> dict[str, Any]:
    """ADDA's first stage: a run with its own target encoder (``target_encoder = "separate"``)
    and no ``init_from`` starts from a source-only run with the same settings, trained (or
    continued, or reused when finished) in ``RUN_DIR/source_only``; the config then records
    that run's best.pt as ``init_from``. A target encoder started from random weights would
    have nothing to align."""
    if not needs_source_stage(cfg):
        return cfg
    rundir.check_new(out_dir)  # a folder holding another run is refused before any training
    stage = out_dir / rundir.SOURCE_STAGE
    diff = _stage_difference(stage, cfg) if (stage / rundir.CONFIG).is_file() else None
    if diff is not None:  # a stage left by an earlier try with other settings
        raise GalmergeError(
            f"{stage} is the source-only stage of a run with {diff[0]} = {diff[1]!r}, not "
            f"{diff[2]!r}; pick another --run-dir, or remove {stage} to train the stage again")
    if not (stage / rundir.SUMMARY).is_file():
        if (stage / rundir.LAST).is_file():  # killed during the stage: continue it
            scfg, _, state, _ = _resume_config(stage, {}, False, None, sets_given)
            _fit(scfg, stage, sets_given, quiet, state, None, dist, device)
        else:
            layer = source_only_layer(cfg)
            _fit(resolve_config(file=layer), stage, sets_given, quiet, None, None, dist, device)
    return dict(cfg, init_from=paths.absolute_path(str(stage / rundir.BEST)))


def _resume_config(
    out_dir: Path, flags: Mapping[str, Any], extras: bool, source: Any,
    sets_given: Mapping[str, ImageSet],
) -> tuple[dict[str, Any], Path, dict[str, Any], dict[str, str]]:
    """The config, folder and last.pt of run ``out_dir`` to continue, and the data specs
    given with ``--source``/``--target`` that name its data at a new place (role -> spec,
    absolute), which config.toml and env.json are to record once the run is locked."""
    if (out_dir / rundir.CONFIG).is_file() and not (out_dir / rundir.LAST).is_file():
        raise GalmergeError(
            f"--resume {out_dir}: the run stopped before its first checkpoint (no last.pt), "
            f"so there is nothing to continue; start it afresh: the same command without "
            f"--resume, with --run-dir {out_dir} --config {out_dir / rundir.CONFIG}")
    stage = out_dir / rundir.SOURCE_STAGE
    if not (out_dir / rundir.CONFIG).is_file() and (stage / rundir.CONFIG).is_file():
        raise GalmergeError(
            f"--resume {out_dir}: the run was stopped during its source-only stage ({stage}), "
            f"before its own config.toml; run the same train command again with --run-dir "
            f"{out_dir} (no --resume): the stage continues from its last checkpoint")
    if not (out_dir / rundir.CONFIG).is_file() or not (out_dir / rundir.LAST).is_file():
        raise GalmergeError(
            f"--resume {out_dir}: no config.toml and last.pt there; pass a run directory "
            f"that trained at least one checkpoint"
        )
    rundir.check_resumable(out_dir)  # before anything in it is read
    # the same --source, --target or --init-from as the run's, however spelt, is no change
    changed = [k for k, v in flags.items()
               if v is not None and k not in ("device", "source", "target", "init_from")]
    if changed or extras:
        raise GalmergeError(
            f"--resume continues a run with its saved config; drop "
            f"{', '.join('--' + k.replace('_', '-') for k in changed) or 'the extra settings'} "
            f"(only --device and --quiet may change)"
        )
    saved = rundir.read_config(out_dir)
    device = flags.get("device")
    with checkpoints.hint_from(out_dir / rundir.LAST):  # which plugin versions trained it
        cfg = resolve_config(cli={"device": device} if device is not None else {}, file=saved,
                             legacy=True)
    for role in paths.SPEC_KEYS:
        part = None if role in sets_given else paths.missing_relative(cfg, role)
        if part is not None:  # a run from before specs were recorded absolute
            raise GalmergeError(
                f"--resume {out_dir}: its {role} {cfg[role]} is a path relative to the folder "
                f"the run was started in, and there is no {part} here; run the same --resume "
                "from that folder")
    moved: dict[str, str] = {}  # role -> the data at its new place, given with --ROLE
    for role in paths.SPEC_KEYS:
        if role in sets_given:
            continue
        given, gone = flags.get(role), paths.missing_absolute(cfg, role)
        if given is not None and not _same_spec(given, cfg[role]):
            if gone is None or not _same_data(given, cfg[role], out_dir, role):
                raise GalmergeError(
                    f"--resume: the run's {role} is {cfg[role]}, not {given}"
                    + (f" (whose SHA-256 is not the one {out_dir / rundir.ENV} records); pass "
                       f"the run's own data at its new place as --{role}, or drop --{role}"
                       if gone is not None else f"; drop --{role} (a resumed run keeps its "
                       "data)"))
            moved[role] = paths.absolute_spec(given)
        elif given is None and gone is not None:
            raise GalmergeError(
                f"--resume {out_dir}: its {role} {cfg[role]}: no such file (the data moved "
                f"apart from the run); pass --{role} with the run's data at its new place "
                f"(checked against the SHA-256 {out_dir / rundir.ENV} records)")
    cfg.update(moved)
    saved = {**saved, **moved}
    for role in paths.SPEC_KEYS:  # the same path with other data in it: another run's data
        changed = (None if role in sets_given or role in moved
                   else paths.changed_file(out_dir, role, cfg[role]))
        if changed is not None:
            raise GalmergeError(
                f"--resume {out_dir}: its {role} data {changed} changed since the run started "
                f"(its SHA-256 is not the one {out_dir / rundir.ENV} records); restore that "
                f"file, or train afresh on it (--config {out_dir / rundir.CONFIG} --run-dir NEW)")
    init = flags.get("init_from")
    if init is not None and not (cfg["init_from"] and _same_checkpoint(init, cfg["init_from"])):
        started = (f"started from {cfg['init_from']}" if cfg["init_from"]
                   else "started without --init-from")
        raise GalmergeError(
            f"--resume {out_dir}: the run {started}, not --init-from {init}; drop --init-from "
            "(a resumed run continues from its last.pt; to start from another checkpoint, "
            "train a new run with --run-dir NEW)")
    try:
        state = read_checkpoint(out_dir / rundir.LAST)
    except GalmergeError as exc:  # its advice (another run directory, best.pt) is for --model
        raise GalmergeError(
            f"--resume {out_dir}: {rundir.LAST} cannot be read ({str(exc).split('; ')[0]}); "
            f"nothing to continue from: start the run again (--config "
            f"{out_dir / rundir.CONFIG} --run-dir NEW)") from None
    trained = state.get("config")
    if isinstance(trained, Mapping):  # config.toml edited since: it would train another run
        trained = paths.with_recorded_files(trained, out_dir)  # read as config.toml is
        # a path that is not there is where the data was before the project moved (last.pt
        # of a resume from there): config.toml, read as above, says where it is now
        trained = {k: saved.get(k) if k in saved and paths.missing_absolute(trained, k)
                   else v for k, v in trained.items()}
        diff = _first_difference(resolve_config(file=saved, legacy=True),
                                 resolve_config(file=dict(trained), legacy=True))
        if diff is not None:
            raise GalmergeError(
                f"--resume {out_dir}: config.toml says {diff[0]} = {diff[1]!r}, but last.pt "
                f"was trained with {diff[2]!r}; a resumed run keeps its settings: put "
                f"{diff[0]} back, or start a new run (--config {out_dir / rundir.CONFIG} "
                "--run-dir NEW)")
    return cfg, out_dir, state, moved


def _same_spec(given: str, recorded: str) -> bool:
    """Whether a survey spec names the data the run recorded: the same text, or the same
    survey and options with a path argument naming the same existing file (``hdf5:data/x.h5``
    and ``hdf5:/abs/data/x.h5`` from here)."""
    if given == recorded:
        return True
    from galmerge.data.datasets import parse_survey_spec

    try:
        (name, arg, options), (name2, arg2, options2) = (parse_survey_spec(given),
                                                         parse_survey_spec(recorded))
    except GalmergeError:
        return False
    if name != name2 or options != options2 or arg is None or arg2 is None:
        return arg == arg2 and name == name2 and options == options2
    a, b = Path(paths.expand(arg)), Path(paths.expand(arg2))
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _same_data(given: str, recorded: str, run_dir: Path, role: str) -> bool:
    """Whether spec ``given`` names the run's ``role`` data moved elsewhere: the same survey
    and options as ``recorded``, and a file whose SHA-256 is the one the run's env.json
    records it read (a run without that record: never)."""
    from galmerge.data.datasets import parse_survey_spec

    try:
        (name, arg, options), (name2, _, options2) = (parse_survey_spec(given),
                                                      parse_survey_spec(recorded))
    except GalmergeError:
        return False
    sha = paths.recorded_sha256(run_dir, role)
    if name != name2 or options != options2 or arg is None or sha is None:
        return False
    path = paths.expand(arg)
    return os.path.isfile(path) and paths.file_sha256(path) == sha


def _warn_changed_data(run: Path, cfg: Mapping[str, Any], cli_layer: Mapping[str, Any]
                       ) -> None:  # fmt: skip
    """``train --config RUN/config.toml``: one warning line on stderr for each data spec taken
    from RUN's record whose file holds other data now than the SHA-256 RUN's env.json records
    (`paths.changed_file`). Not an error: a run's config is also a template, trained again on
    purpose on data changed since; the new run's env.json records the file as it is now. A spec
    given here (``--source``/``--target``) is the user's choice, not RUN's data. Rank 0 alone
    hashes the file (the survey shares its digest with the other ranks as it loads it)."""
    if not ddp.from_environment().is_main:
        return
    said: set[str] = set()
    for role in paths.SPEC_KEYS:
        changed = None if role in cli_layer else paths.changed_file(run, role, cfg.get(role))
        if changed is not None and changed not in said:  # one file for both roles: one line
            said.add(changed)
            print(paths.data_changed_warning("train", run, role, changed,
                                             "this run trains on the file as it is now"),
                  file=sys.stderr)


def _same_checkpoint(given: str, recorded: str) -> bool:
    """Whether ``--init-from`` names the checkpoint the run recorded as its start: the same
    file, however spelt (relative or absolute; a run directory means its best.pt)."""
    def path(text: str) -> Path:
        p = Path(paths.expand(text))
        return (p / rundir.BEST if p.is_dir() else p).resolve()

    return given == recorded or path(given) == path(recorded)


def _note_legacy(config: Path, cli_layer: Mapping[str, Any], cfg: Mapping[str, Any],
                 quiet: bool) -> None:
    """Say in one line which settings a run's config.toml from an older galmerge lacked and
    took at the values its run trained with (`galmerge.config.legacy`), where today's default
    or preset would have given another."""
    if quiet or not ddp.from_environment().is_main:
        return
    _, filled = fill_legacy(rundir.read_config(config.parent))
    if not filled:
        return
    try:
        today: Mapping[str, Any] = resolve_config(cli=cli_layer, file=config)
    except GalmergeError:
        today = {}
    differ = [k for k in filled if _at(cfg, config_path(k)) != _at(today, config_path(k))]
    if differ:
        shown = ", ".join(f"{setting_name(k)}={_show(_at(cfg, config_path(k)))}" for k in differ)
        print(f"galmerge train: note: {config} is the record of a run from before these settings "
              f"existed; they take the values it trained with instead of today's: {shown}",
              file=sys.stderr)


def _at(config: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = config
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _check_rules(cfg: Mapping[str, Any]) -> None:
    for key in ("select_by", "stop_by"):
        name = cfg.get(key) or ""
        if key == "stop_by" and not name:
            continue
        if name not in selection.DIRECTIONS:
            raise GalmergeError(
                f"unknown --{key.replace('_', '-')} '{name}'; available: "
                f"{', '.join(sorted(selection.DIRECTIONS))}"
            )
    if cfg.get("early_stopping", "patience") not in RULES:
        raise GalmergeError(
            f"early_stopping must be one of {', '.join(RULES)}, got {cfg['early_stopping']!r}"
        )


def _run(
    cfg: dict[str, Any], out_dir: Path, sets_given: Mapping[str, ImageSet], quiet: bool,
    resume_state: dict[str, Any] | None, on_epoch: OnEpoch | None,
    resumed_from: tuple[int, int, int] | None = None, moved: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    from galmerge.runtime.devices import resolve_device

    dist = ddp.from_environment()
    quiet = quiet or not dist.is_main
    device = ddp.setup(dist, resolve_device(cfg["device"]))
    # one run directory for all ranks (a default name holds a timestamp that may differ)
    out_dir = Path(str(ddp.broadcast_object(str(out_dir), dist)))
    try:
        with contextlib.ExitStack() as held:
            # rank 0 holds the run directory's lock from its check (check_new, prepare_new)
            # to the end of training; its refusal ends every rank
            ddp.on_main(lambda: held.enter_context(rundir.writing(out_dir)), dist)
            if resume_state is not None:
                ddp.on_main(lambda: _check_unchanged(out_dir, resumed_from), dist)
            if resume_state is None:  # one process group for both stages (it cannot re-form)
                cfg = _source_stage(cfg, out_dir, sets_given, quiet, dist, device)
            return _fit(cfg, out_dir, sets_given, quiet, resume_state, on_epoch, dist, device,
                        moved)
    finally:
        ddp.teardown(dist)


def _check_unchanged(out_dir: Path, resumed_from: tuple[int, int, int] | None) -> None:
    """--resume: last.pt as read before the lock was taken, not one another train wrote since."""
    if rundir.file_stamp(out_dir / rundir.LAST) != resumed_from:
        raise GalmergeError(f"--resume {out_dir}: its last.pt changed while this command read "
                            "it (another galmerge train was writing the run); run it again")


def _fit(
    cfg: dict[str, Any], out_dir: Path, sets_given: Mapping[str, ImageSet], quiet: bool,
    resume_state: dict[str, Any] | None, on_epoch: OnEpoch | None, dist: ddp.DistInfo,
    device: torch.device, moved: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    t_start = time.time()
    try:
        trainer = _build(cfg, out_dir, sets_given, dist, device, resume_state)
        if dist.is_main:
            # Never a silent device choice: one line even with --quiet (stderr keeps stdout
            # clean); printed once the run is built, so a mistake found while building stays
            # the only line on stderr
            extra = f" x{dist.world} processes" if dist.enabled else ""
            print(f"galmerge train: device {device}{extra} (asked: {cfg['device']})",
                  file=sys.stderr)
            if cfg["strategy"] != "none" and not trainer.plan.needs_target:
                # e.g. `fisher` alone: a source-side term, not an adaptation (stop 24)
                print(f"galmerge train: note: {cfg['strategy']} reads no target image, so this "
                      f"run trains on the source only; combine it with a strategy that aligns "
                      f"the target, e.g. dann+{cfg['strategy']}", file=sys.stderr)
            if trainer.plan.needs_target and _same_scenes(trainer.source.imageset,
                                                          trainer.target.imageset):
                seed = trainer.source.imageset.meta["seed"]
                print(f"galmerge train: note: source and target are renders of the same scenes "
                      f"(synthetic seed {seed} both): adaptation looks better than it will on a "
                      f"survey; give the target another seed, e.g. "
                      f"'synthetic:sdss?seed={int(seed) + 1}'", file=sys.stderr)
        return _train(trainer, quiet, on_epoch, t_start, moved)
    except StrategyOutputError:
        if resume_state is None and dist.is_main:
            rundir.discard_new(out_dir)  # first step: nothing worth keeping was written
        raise


def _same_scenes(source: ImageSet, target: ImageSet) -> bool:
    """Whether two synthetic renders draw the same scenes (the same number, seed and merger
    fraction: `galmerge.surveys.synthetic.render.sample_scenes`), i.e. paired images of one
    sky."""
    keys = ("renderer_version", "seed", "merger_fraction")
    a, b = source.meta, target.meta
    return (len(source) == len(target) and all(k in a and k in b for k in keys)
            and all(a[k] == b[k] for k in keys[1:]))


def _build(
    cfg: dict[str, Any], out_dir: Path, sets_given: Mapping[str, ImageSet],
    dist: ddp.DistInfo, device: torch.device, resume_state: dict[str, Any] | None,
) -> Trainer:
    """Data, plan and trainer, in the order the RNG has always been drawn in."""
    if int(cfg["batch_size"]) % dist.world:
        raise GalmergeError(
            f"--batch-size {cfg['batch_size']} does not split evenly over {dist.world} "
            f"processes; use a multiple of {dist.world}"
        )
    seed_everything(int(cfg["seed"]))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with ddp.loading_together(dist):  # every rank loads both: rank 0 hashes files
        # a resumed run may have trained on in-memory sets: its error says to pass them
        again = resume_state is not None
        source_set = load_imageset(sets_given.get("source"), cfg["source"],
                                   "source" if again else "")
        target_set = load_imageset(sets_given.get("target"), cfg["target"],
                                   "target" if again else "")
    init = None
    if cfg["init_from"] and resume_state is None:
        init = read_checkpoint(cfg["init_from"])
    specs = None
    if resume_state is not None:  # the specs the run trained with, never measured again
        specs = checkpoints.resume_specs(resume_state, source_set.channels, out_dir)
    elif init is not None and cfg.get("init_keep_preprocess"):
        specs = checkpoints.init_specs(init, source_set.channels, cfg["init_from"])
    source, target = prepare_domains(cfg, source_set, target_set, device, specs)
    plan = make_plan(cfg, out_dir, device, dist, len(source.splits["train"]), needs_target(cfg))
    trainer = Trainer(plan, source, target, init, resume_state)
    if resume_state is not None:
        trainer.load(resume_state)
    else:  # rank 0's refusal (a run directory not empty) ends every rank
        ddp.on_main(lambda: rundir.prepare_new(out_dir), dist)
    return trainer


def _train(
    trainer: Trainer, quiet: bool, on_epoch: OnEpoch | None, t_start: float,
    moved: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    plan = trainer.plan
    if plan.dist.is_main:
        if not trainer.resumed:  # a resumed run keeps its config.toml (but data moved, below)
            rundir.write_config(plan.out_dir, plan.config)
        env = rundir.environment(plan.device)
        env["world_size"] = plan.dist.world
        env[versions.KEY] = trainer.plugin_versions  # as in each checkpoint
        # what the data specs resolved to here (e.g. the synthetic renderer's version, a file)
        env["data"] = {role: _data_record(domain.imageset)
                       for role, domain in (("source", trainer.source), ("target", trainer.target))}
        # where the run's folder is as config.toml records its absolute paths: read back after
        # the project moved or was copied, they are found relative to it (paths.rebased)
        env["run_dir"] = os.path.abspath(plan.out_dir)
        # --resume with the run's data given at a new place: config.toml names it from now on,
        # written before training, as each last.pt from here on records it
        data_moved = rundir.record_moved_data(plan.out_dir, moved) if moved else {}
        if not trainer.resumed or not (plan.out_dir / rundir.ENV).exists():
            rundir.write_json(plan.out_dir / rundir.ENV, env)
        else:  # each resume is recorded: another thread count or CPU rounds sums differently
            rundir.record_resume(plan.out_dir, env, quiet, data_moved)
    progress = Progress(quiet, plan.epochs, plan.steps_per_epoch)
    source, target = trainer.source.imageset, trainer.target.imageset
    progress.info(
        f"{source.describe()}\n{target.describe()}\n"
        f"strategy {plan.config['strategy']}{'' if plan.needs_target else ' (source only)'}, "
        f"backbone {plan.config['backbone']}, {plan.steps_per_epoch} steps/epoch, "
        f"batch {plan.batch}",
        path=plan.out_dir,
    )
    if trainer.init_loaded:
        progress.info(f"init_from: strategy state loaded for {', '.join(trainer.init_loaded)}")
    trainer.fit(progress, on_epoch)
    ddp.barrier(plan.dist)
    summary = trainer.finish(t_start)
    if summary is not None:
        rundir.write_json(plan.out_dir / rundir.SUMMARY, summary)
        results_table(summary, quiet)
    summary = ddp.broadcast_object(summary, plan.dist)  # type: ignore[assignment]
    assert summary is not None
    return rundir._json_safe(summary)
