"""`galmerge reproduce deepmerge2`: train the DeepMerge II method grid with the paper presets,
evaluate every run and write the paper-style table (`galmerge.evaluation.comparison`).

Layout under ``out``::

    EXPERIMENT/BACKBONE/METHOD/seedN/   one run directory per (method, backbone, seed)
    EXPERIMENT/table.md, table.csv      mean ± std over seeds, gain over source-only

``sim-real-tl`` (``--tl``) runs start from the ``sim-sim`` run of the same method, backbone and
seed (trained first when missing) and are tabled against the ``sim-real`` source-only runs.

Resumable: a run directory with ``summary.json`` is finished and skipped; one with ``last.pt``
continues from it (`galmerge train --resume`); anything else is trained from the start. A finished
run made with other settings (a different ``--epochs``, say) is an error, never silently reused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galmerge.config import rundir
from galmerge.config.presets import PAPER_METHODS
from galmerge.errors import GalmergeError
from galmerge.io import atomic
from galmerge.plugin.manager import get_plugin_manager
from galmerge.runtime.devices import check_device_name

# experiment -> (source spec, target spec, preset); the specs read `galmerge fetch` files
EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "sim-sim": ("illustris:pristine", "illustris:noisy", "deepmerge2-sim-sim"),
    "sim-real": ("illustris:sim-real", "sdss", "deepmerge2-sim-real"),
    "sim-real-tl": ("illustris:sim-real", "sdss", "deepmerge2-sim-real-tl"),
}
PAPERS = ("deepmerge2",)
# the backbones the paper trained; `--backbone` takes any installed one
BACKBONES = ("deepmerge", "resnet18")
# what identifies a run: a finished directory that differs in one of these is not this run
IDENTITY = ("source", "target", "strategy", "backbone", "seed", "preset", "epochs",
            "batch_size", "max_steps_per_epoch", "init_from")


@dataclass(frozen=True)
class PlannedRun:
    experiment: str
    method: str
    backbone: str
    seed: int
    run_dir: Path
    source: str
    target: str
    init_from: Path | None = None

    def layer(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The config layer this run trains with (the preset does the rest)."""
        preset = EXPERIMENTS[self.experiment][2]
        layer: dict[str, Any] = {
            "source": self.source, "target": self.target, "strategy": self.method,
            "backbone": self.backbone, "seed": self.seed, "preset": preset,
            **dict(settings),
        }
        if self.init_from is not None:
            layer["init_from"] = str(self.init_from)
        return layer


def plan(
    experiment: str,
    seeds: Sequence[int],
    backbones: Sequence[str],
    methods: Sequence[str],
    out: Path,
    data: Mapping[str, str] | None = None,
) -> list[PlannedRun]:
    """Every run of the grid in training order (TL prerequisites first). ``data`` may replace
    the experiment's ``source``/``target`` specs, and ``sim_sim_source``/``sim_sim_target``
    those of the sim-sim runs TL starts from."""
    runs: list[PlannedRun] = []
    data = dict(data or {})

    def run(exp: str, method: str, backbone: str, seed: int, init: Path | None = None):
        path = out / exp / backbone / method / f"seed{seed}"
        source, target, _ = EXPERIMENTS[exp]
        if exp != "sim-sim" or experiment == "sim-sim":
            source, target = data.get("source", source), data.get("target", target)
        else:  # the sim-sim run a TL run starts from
            source = data.get("sim_sim_source", source)
            target = data.get("sim_sim_target", target)
        return PlannedRun(exp, method, backbone, seed, path, source, target, init)

    for backbone in backbones:
        for seed in seeds:
            if experiment == "sim-real-tl":
                # source-only baseline without TL (the paper has no TL noDA row)
                if "none" in methods:
                    runs.append(run("sim-real", "none", backbone, seed))
                for method in (m for m in methods if m != "none"):
                    pre = run("sim-sim", method, backbone, seed)
                    runs.append(pre)
                    runs.append(run("sim-real-tl", method, backbone, seed, pre.run_dir))
            else:
                runs += [run(experiment, m, backbone, seed) for m in methods]
    return runs


def run_state(path: Path) -> str:
    """``done`` (summary.json), ``partial`` (last.pt to resume from) or ``new``."""
    if (path / rundir.SUMMARY).is_file():
        return "done"
    if (path / rundir.LAST).is_file() and (path / rundir.CONFIG).is_file():
        return "partial"
    return "new"


def _check_data(runs: Sequence[PlannedRun]) -> None:
    """Fail before the first run when a released file is missing."""
    from galmerge.surveys.deepmerge.data import SETS, data_root, find_file

    root = data_root()
    for spec in dict.fromkeys(s for r in runs for s in (r.source, r.target)):
        survey, _, key = spec.partition(":")
        ds = SETS.get((survey, key or "postmergers"))
        if ds is None:  # not a released DeepMerge set: its survey reports what is missing
            continue
        for file in ds.files:
            if find_file(file, root) is None:
                raise GalmergeError(
                    f"{spec}: {file} is missing in {root}; run `galmerge fetch {ds.fetch}` "
                    "first (or set GALMERGE_DATA)"
                )


def _check_same(run: PlannedRun, settings: Mapping[str, Any]) -> None:
    """A run directory left by an earlier call must be this very run."""
    from galmerge.config.resolve import resolve_config

    saved = rundir.read_config(run.run_dir)
    wanted = resolve_config(file=run.layer(settings))
    differ = [k for k in IDENTITY if str(saved.get(k)) != str(wanted.get(k))
              and not (k == "init_from" and _same_folder(run.run_dir, saved.get(k),
                                                         wanted.get(k)))]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} (now {wanted.get(k)!r})" for k in differ)
        raise GalmergeError(
            f"{run.run_dir} was trained with other settings: {shown}; pass another --out or "
            f"delete that directory"
        )


def _same_folder(run_dir: Path, saved: Any, wanted: Any) -> bool:
    """Whether a recorded ``init_from`` names the folder ``wanted`` (absolute) does: as written,
    or, relative (recorded before it was absolute), from the working directory or from a
    folder above ``run_dir`` (where an earlier call's relative ``--out`` started)."""
    if not saved or not wanted:
        return False
    path = Path(str(saved))
    bases = [Path.cwd()] if path.is_absolute() else [Path.cwd(), *run_dir.resolve().parents]
    return any((base / path).resolve() == Path(str(wanted)).resolve() for base in bases)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        import click

        click.echo(text)


def reproduce(
    paper: str = "deepmerge2",
    experiment: str = "sim-real",
    *,
    seeds: int = 3,
    backbones: Sequence[str] = ("deepmerge",),
    methods: Sequence[str] = PAPER_METHODS,
    out: str | Path = "reproduce-deepmerge2",
    settings: Mapping[str, Any] | None = None,
    data: Mapping[str, str] | None = None,
    device: str | None = None,
    evaluate: bool = True,
    bootstrap: int = 200,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Train, evaluate and table the grid; returns the table rows (`galmerge.evaluation.comparison`).

    ``settings`` overrides preset values for every run (e.g. ``{"epochs": 2}`` for a quick look);
    ``data`` replaces the released data specs (``{"source": ..., "target": ...}``, e.g. the
    synthetic pair, and for TL ``sim_sim_source``/``sim_sim_target``, the data of the sim-sim
    runs it starts from); seeds are 1..``seeds`` (the authors' commands use seed 1).
    """
    from galmerge.evaluation.comparison import compare, to_markdown, write_table
    from galmerge.training import train

    if paper not in PAPERS:
        raise GalmergeError(f"unknown paper '{paper}'; available: {', '.join(PAPERS)}")
    if experiment not in EXPERIMENTS:
        raise GalmergeError(
            f"unknown experiment '{experiment}'; choose one of {', '.join(EXPERIMENTS)}"
        )
    if seeds < 1:
        raise GalmergeError(f"--seeds {seeds}: use 1 or more")
    # any installed backbone, a plugin's too; an unknown name lists them (`galmerge list`)
    pm = get_plugin_manager()
    backbones = list(dict.fromkeys(pm.get("backbones", b).name for b in backbones))
    for method in methods:
        if method not in PAPER_METHODS:
            raise GalmergeError(
                f"--method {method}: the paper's methods are {', '.join(PAPER_METHODS)}"
            )
    if device is not None:
        check_device_name(device)  # before the first run's line
    settings = dict(settings or {})
    # absolute: TL runs record their sim-sim run as init_from, which must name the same folder
    # from any working directory and however --out was spelt
    out = Path(out).resolve()
    runs = plan(experiment, range(1, seeds + 1), backbones, methods, out, data)
    _check_data(runs)
    for backbone in (b for b in backbones if b not in BACKBONES):
        _say(quiet, f"note: backbone {backbone} is not in the paper ({' and '.join(BACKBONES)}): "
                    "its runs take the preset's deepmerge values and the backbone's own option "
                    "defaults")
    for i, run in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}] {run.experiment} {run.backbone} {run.method} seed {run.seed}"
        state = run_state(run.run_dir)
        if state != "new":
            _check_same(run, settings)
        if state == "done":
            _say(quiet, f"{label}: finished earlier, skipped ({run.run_dir})")
        elif state == "partial":
            _say(quiet, f"{label}: resuming {run.run_dir}")
            train(resume=run.run_dir, device=device, quiet=True)
        else:
            # a folder left by a run killed before its first checkpoint is taken over by train
            # (galmerge.config.rundir.prepare_new); one holding anything else is refused there,
            # never deleted
            _say(quiet, f"{label}: training into {run.run_dir}")
            layer = run.layer(settings)
            if device is not None:
                layer["device"] = device
            train(config=layer, run_dir=run.run_dir, quiet=True)
        if evaluate and not (run.run_dir / "report" / "metrics.json").is_file():
            from galmerge.evaluation.pipeline import evaluate as evaluate_run

            evaluate_run(run.run_dir, device=device or "auto", bootstrap=bootstrap, quiet=True)

    members = [r.run_dir for r in runs if r.experiment == experiment or (
        experiment == "sim-real-tl" and r.experiment == "sim-real")]
    rows = compare(members)
    source, target = runs[-1].source, runs[-1].target
    preset = EXPERIMENTS[experiment][2]
    heading = (
        f"# DeepMerge II {experiment}: {source} -> {target}, --preset {preset}\n\n"
        f"Seeds {f'1-{seeds}' if seeds > 1 else '1'}; settings beyond the preset: "
        f"{settings or 'none'}. Gains are over the "
        f"source-only (`none`) runs{' without TL' if experiment == 'sim-real-tl' else ''}.\n\n"
    )
    table = out / experiment / "table.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(table, heading + to_markdown(rows))
    write_table(rows, table.with_suffix(".csv"))
    _say(quiet, f"wrote {table} and {table.with_suffix('.csv')}")
    return rows
