"""The `galmerge` command group. Commands load lazily so `galmerge --help` stays fast."""

from __future__ import annotations

import errno
import importlib
import os
import sys
from typing import Any

import click

from galmerge import __version__
from galmerge.errors import GalmergeError, from_cli

# name -> ("module:attribute", one-line help shown without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("galmerge.commands.train:train", "Train a merger classifier with domain adaptation."),
    "tune": (
        "galmerge.commands.tune:tune",
        "Search hyperparameters on a label-free score (Optuna).",
    ),
    "classify": (
        "galmerge.commands.classify:classify",
        "Classify every galaxy of a catalog (or an HDF5 image file).",
    ),
    "evaluate": (
        "galmerge.commands.evaluate:evaluate",
        "Metrics, plots and a report for a run directory.",
    ),
    "compare": (
        "galmerge.commands.evaluate:compare",
        "Paper-style table over several run directories.",
    ),
    "fraction": (
        "galmerge.commands.fraction:fraction",
        "Merger fraction of a classify output, corrected for errors and prior shift.",
    ),
    "fetch": ("galmerge.commands.fetch:fetch", "Download the real DeepMerge data files."),
    "preview": ("galmerge.commands.preview:preview", "Write a PNG grid of a survey's images."),
    "reproduce": (
        "galmerge.commands.reproduce:reproduce",
        "Train, evaluate and table a paper's method grid (deepmerge2).",
    ),
    "plugins": ("galmerge.commands.plugins:plugins_cmd", "List installed plugins."),
    "presets": (
        "galmerge.commands.presets:presets_cmd",
        "List hyperparameter presets and the source of each value.",
    ),
    "list": ("galmerge.commands.plugins:list_cmd", "List backbones, strategies or surveys."),
    "export": (
        "galmerge.commands.export:export",
        "Write a trained model as ONNX or TorchScript (runs without galmerge).",
    ),
    "install": (
        "galmerge.commands.install:install",
        "Install plugins into galmerge's own environment (pip).",
    ),
    "uninstall": (
        "galmerge.commands.install:uninstall",
        "Uninstall plugins from galmerge's own environment (pip).",
    ),
}


_ENVIRONMENT_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EDQUOT,
    errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP,
})


# commands whose torchrun processes work apart (no process group): an error may be one rank's
RANKS_APART = frozenset({"classify"})


def _launch() -> tuple[int, int]:
    """(WORLD_SIZE, RANK) when a launcher such as torchrun started this process, else (1, 0).
    Read here, not by `galmerge.runtime.distributed` (which imports torch at every start);
    malformed values count as (1, 0): that module says so in one line when a command runs."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return 1, 0


def _collective_failure(exc: RuntimeError) -> bool:
    """A torch.distributed collective that failed because another process of the run ended."""
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    if isinstance(dist_error, type) and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return "/gloo/" in text or "Connection closed by peer" in text


def _everyones(exc: BaseException) -> bool:
    """Whether every rank raised this error alike, so rank 0 prints it: one handed on from
    rank 0 (`SharedError`), or one raised before this process joined a process group (from
    the command line, the config or the data specs). Any other may be this rank's own."""
    ddp = sys.modules.get("galmerge.runtime.distributed")
    if ddp is None:
        return True  # no multi-process code ran: an argument or config error
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, ddp.SharedError) or not ddp.group_formed()


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs; adds plugin commands."""

    _plugin_commands_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugin_commands_loaded:
            return
        self._plugin_commands_loaded = True
        from galmerge.plugin.manager import get_plugin_manager

        get_plugin_manager().add_commands(self, reserved=set(COMMANDS))

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            target, _ = COMMANDS[name]
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)
        if name not in self.commands:
            self._load_plugin_commands()
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._load_plugin_commands()
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        rows += [
            (name, cmd.get_short_help_str(60))
            for name, cmd in self.commands.items()
            if name not in COMMANDS
        ]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))

    def invoke(self, ctx: click.Context) -> Any:
        world, rank = _launch()
        if world <= 1:
            return self._invoke(ctx)
        main = rank <= 0
        # several processes: every rank of a torchrun run raises the same error for the same
        # arguments (and `train` hands rank 0's run-directory refusals on), so rank 0 prints it
        try:
            return self._invoke(ctx)
        except click.ClickException as exc:
            if main:
                raise
            if ctx.invoked_subcommand in RANKS_APART or not _everyones(exc):
                # this rank's own (or a command whose ranks work apart): say whose it is
                raise click.ClickException(f"rank {rank}: {exc.format_message()}") from None
            raise click.exceptions.Exit(exc.exit_code) from None  # every rank has it: rank 0 prints
        except (KeyboardInterrupt, click.Abort):
            if main:
                raise
            raise click.exceptions.Exit(1) from None  # "Aborted!" once, from rank 0
        except RuntimeError as exc:
            if not _collective_failure(exc):
                raise
            if not main:  # another rank stopped (its error is printed there): no traceback of ours
                raise click.exceptions.Exit(1) from None
            raise click.ClickException(
                "another process of this run stopped (its error is printed above), so this "
                "one cannot go on; mend that and run the same command again") from None

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            with from_cli():  # messages name the command's options, not Python's arguments
                return super().invoke(ctx)
        except GalmergeError as exc:
            # a last guard: no line shows a URL's user info (a survey option's password)
            from galmerge.io.provenance import hide_userinfo

            raise click.ClickException(hide_userinfo(str(exc))) from None
        except OSError as exc:
            # the user's environment, not a bug: an unwritable or misplaced path, a full disk
            if exc.errno not in _ENVIRONMENT_ERRNOS or not exc.filename:
                raise
            raise click.ClickException(
                f"{exc.filename}: {exc.strerror or exc}; check that path (a writable folder, "
                "free space, the file-size limit) and run the same command again") from None


@click.group(
    cls=LazyGroup,
    # every option's help shows its default (subcommands inherit this)
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(__version__, prog_name="galmerge")
def cli() -> None:
    """galmerge: find merging galaxies in sky surveys with domain-adapted deep learning."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="galmerge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
