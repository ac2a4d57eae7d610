"""`galmerge install` / `galmerge uninstall`: pip, run by the interpreter galmerge runs in.

A plugin must be installed where galmerge is installed (the same environment), which a bare
``pip`` on PATH may not be; running ``sys.executable -m pip`` makes that automatic (the llm
pattern). Options pip knows and these commands do not (``--index-url``, ``--no-index``,
``--find-links DIR``, ``--no-build-isolation``...) are passed through to pip unchanged.
"""

from __future__ import annotations

import re
import subprocess
import sys

import click

from galmerge.errors import GalmergeError

#: where third-party plugins are listed: every plugin declares this keyword in its pyproject
PLUGIN_KEYWORD = "galmerge-plugin"
PLUGIN_INDEX_URL = f"https://pypi.org/search/?q={PLUGIN_KEYWORD}"

_PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    try:
        code = subprocess.call(command)
    except OSError as exc:  # the interpreter itself is gone or not executable
        raise GalmergeError(f"cannot run pip with {sys.executable}: {exc}") from None
    if code != 0:
        # pip has printed why; exit with its status so scripts see the failure
        raise click.exceptions.Exit(code)


@click.command("install", context_settings=_PASS_THROUGH)
@click.argument("packages", nargs=-1, type=click.UNPROCESSED)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade the packages to their newest version.")
@click.option("-e", "--editable", metavar="PATH", help="Install a plugin checkout in editable mode.")
@click.option("--force-reinstall", is_flag=True, help="Reinstall even if already up to date.")
@click.option("--no-cache-dir", is_flag=True, help="Do not use pip's download cache.")
@click.option("--dry-run", is_flag=True, help="Say what would be installed; install nothing.")
def install(
    packages: tuple[str, ...],
    upgrade: bool,
    editable: str | None,
    force_reinstall: bool,
    no_cache_dir: bool,
    dry_run: bool,
) -> None:
    """Install plugins (PyPI names, paths or wheels) into galmerge's own environment.

    Other pip options are passed on, e.g. `galmerge install --no-index --find-links wheels/
    galmerge-mcc`. Plugins on PyPI carry the keyword `galmerge-plugin`.
    """
    if not packages and not editable:
        raise GalmergeError(
            "name a plugin to install, e.g. `galmerge install galmerge-mcc` "
            f"(plugins on PyPI: {PLUGIN_INDEX_URL})"
        )
    args = ["install"]
    if upgrade:
        args.append("--upgrade")
    if editable:
        args += ["--editable", editable]
    if force_reinstall:
        args.append("--force-reinstall")
    if no_cache_dir:
        args.append("--no-cache-dir")
    if dry_run:
        args.append("--dry-run")
    _pip(*args, *packages)


@click.command("uninstall", context_settings=_PASS_THROUGH)
@click.argument("packages", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(packages: tuple[str, ...], yes: bool) -> None:
    """Uninstall plugins from galmerge's own environment."""
    if any(p.startswith(("-r", "--requirement")) for p in packages):
        raise GalmergeError("`galmerge uninstall` takes plugin names, not a requirements file; "
                            "name the plugins")
    plugins = _plugin_distributions()
    names, skip = [], False
    for arg in packages:  # the value of a pip option given apart (--log FILE) is no name
        if skip:
            skip = False
        elif arg.startswith("-"):
            option = arg.split("=", 1)[0]
            if option not in _VALUE_OPTIONS and option not in _FLAGS:
                # pip also takes abbreviations (--requirem=FILE is --requirement): only the
                # options named here reach it
                raise GalmergeError(
                    f"`galmerge uninstall` does not pass {option} to pip; it takes plugin names "
                    f"and pip's output and network options ({', '.join(sorted(_FLAGS))}, "
                    f"{', '.join(sorted(_VALUE_OPTIONS))})")
            skip = "=" not in arg and option in _VALUE_OPTIONS
        else:
            names.append(arg)
    for name in names:
        dist = _distribution_name(name)
        if dist == "galmerge":
            raise GalmergeError(
                "`galmerge uninstall` removes plugins, not galmerge itself; "
                f"use `{sys.executable} -m pip uninstall galmerge`"
            )
        if dist not in plugins:  # e.g. torch, or a typo: pip would remove whatever it names
            raise GalmergeError(
                f"{name} is not an installed galmerge plugin (installed: "
                f"{', '.join(sorted(plugins)) or 'none'}); `galmerge uninstall` removes plugins "
                f"only, other packages with `{sys.executable} -m pip uninstall`")
    _pip("uninstall", *(["--yes"] if yes else []), *packages)


#: pip options that take a value that `galmerge uninstall` passes on (pip uninstall's and
#: pip's general ones; not --python, which would act on another environment)
_VALUE_OPTIONS = {"--log", "--root-user-action", "--proxy", "--retries", "--timeout",
                  "--exists-action", "--trusted-host", "--cert", "--client-cert", "--cache-dir",
                  "--keyring-provider", "--use-feature", "--use-deprecated",
                  "--resume-retries"}
#: pip flags it passes on
_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "-q", "-qq", "-qqq", "--quiet", "--no-input",
          "--disable-pip-version-check", "--no-color", "--no-cache-dir", "--isolated",
          "--break-system-packages", "--require-virtualenv"}


def _distribution_name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``Galmerge_MCC==0.1`` ->
    ``galmerge-mcc``; PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement


def _plugin_distributions() -> set[str]:
    """Normalised names of the installed distributions that declare a galmerge entry point."""
    from importlib import metadata

    from galmerge.plugin.manager import GROUP

    return {_distribution_name(ep.dist.name) for ep in metadata.entry_points(group=GROUP)
            if ep.dist is not None}
