"""`galmerge train`: a thin layer over `galmerge.training.train`."""

from __future__ import annotations

import click

from galmerge.commands.device_option import checked_device
from galmerge.config.resolve import DEFAULTS


def _help(text: str, key: str) -> str:
    """Help text plus the config default a flag falls back to (the flag itself defaults to None
    so that a preset or a --config file can fill it in first)."""
    return f"{text}  [default: {DEFAULTS[key]}]"


@click.command("train")
@click.option("--source", help="Labelled source survey spec, e.g. synthetic:illustris or hdf5:PATH.")
@click.option("--target", help="Target survey spec (its labels are only used for reporting).")
@click.option("--strategy", help=_help("DA strategy expression, e.g. none, mmd+fisher+entropy, dann+fisher.", "strategy"))
@click.option("--backbone", help=_help("Backbone name (deepmerge, resnet18, ...).", "backbone"))
@click.option("--epochs", type=int, help=_help("Maximum number of epochs (a preset may set its own).", "epochs"))
@click.option("--batch-size", type=int, help=_help("Images per domain per step (global over processes).", "batch_size"))
@click.option("--lr", type=float, help=_help("Peak learning rate of the one-cycle schedule.", "lr"))
@click.option("--seed", type=int, help=_help("Seed for splits, initialisation and batch order.", "seed"))
@click.option("--device", callback=checked_device, help=_help("auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.", "device"))
@click.option("--run-dir", type=click.Path(file_okay=False), help="Output run directory.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config (e.g. a run's config.toml); flags override it.")
@click.option("--preset", help="Hyperparameter preset: deepmerge2-sim-sim, deepmerge2-sim-real, deepmerge2-sim-real-tl (the paper's code; `galmerge presets NAME` shows each value's source) or synthetic-sim-real (tuned for the built-in pair).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue this run directory.")
@click.option("--init-from", help="Start from the weights of a run directory or checkpoint.")
@click.option("--patience", type=int, help=_help("Early-stopping patience in epochs (0 = off).", "patience"))
@click.option("--weight-decay", type=float, help=_help("Adam weight decay.", "weight_decay"))
@click.option("--select-by", help=_help("Which epoch becomes best.pt: auto (im with its own target encoder, else source_val_loss), source_val_loss, source_val_accuracy, source_val_batch_loss, or a label-free score: im, im_src, snd, dev, entropy.", "select_by"))
@click.option("--set", "sets", multiple=True, metavar="[SECTION.]OPTION=VALUE",
              help="A setting, e.g. --set domain_batchnorm=joint, or a strategy, optimizer or "
              "schedule option, e.g. --set fisher.intra_weight=0.01 (every setting: the docs' "
              "Settings page; each strategy's options: galmerge list strategies).")
@click.option("--backbone-option", "backbone_options", multiple=True, metavar="KEY=VALUE",
              help="Backbone option, e.g. --backbone-option dropout=0.3 (each backbone's "
              "options: galmerge list backbones).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@click.option("--max-steps-per-epoch", type=int, help=_help("Cap on steps per epoch (0 = a full pass).", "max_steps_per_epoch"))
@click.option("--checkpoint-every", type=int, help=_help("Also write last.pt every N steps (0 = at each epoch's end only).", "checkpoint_every"))
@click.option("--quiet", is_flag=True, help="No progress display or results table (the closing "
              "collapse warning still goes to stderr).")
def train(
    source: str | None,
    target: str | None,
    strategy: str | None,
    backbone: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    device: str | None,
    run_dir: str | None,
    config_file: str | None,
    preset: str | None,
    resume: str | None,
    init_from: str | None,
    patience: int | None,
    weight_decay: float | None,
    select_by: str | None,
    sets: tuple[str, ...],
    backbone_options: tuple[str, ...],
    compile_: bool | None,
    max_steps_per_epoch: int | None,
    checkpoint_every: int | None,
    quiet: bool,
) -> None:
    """Train a merger classifier with domain adaptation; writes a run directory."""
    from galmerge.config.resolve import parse_assignment
    from galmerge.errors import GalmergeError
    from galmerge.training import train as run_training

    # an explicit empty value was taken as "left out" (no preset, auto), unsaid
    if preset is not None and not preset.strip():
        raise GalmergeError(f"--preset {preset!r}: give a preset name (`galmerge presets` lists "
                            "them) or leave --preset out")
    bopts = dict(parse_assignment(text, "--backbone-option") for text in backbone_options)
    if preset and strategy and not quiet:
        from galmerge.config.presets import borrowed_note

        note = borrowed_note(preset, strategy, backbone or "deepmerge")
        if note:
            click.echo(note, err=True)
    run_training(
        source=source,
        target=target,
        strategy=strategy,
        backbone=backbone,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        run_dir=run_dir,
        config=config_file,
        preset=preset,
        resume=resume,
        init_from=init_from,
        patience=patience,
        weight_decay=weight_decay,
        select_by=select_by,
        sets=sets,
        backbone_options=bopts or None,
        compile=compile_,
        quiet=quiet,
        max_steps_per_epoch=max_steps_per_epoch,
        checkpoint_every=checkpoint_every,
    )
