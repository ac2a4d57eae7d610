"""Which distribution, at which version, provided each component a run used.

A run records it in every checkpoint and in env.json under `KEY`::

    {"backbone": {NAME: ENTRY}, "strategy": {NAME: ENTRY, ...}, "survey": {NAME: ENTRY, ...}}
    ENTRY = {"plugin": str, "distribution": str, "version": str}   # "" where unknown

(plain strings only: checkpoints load with the weights-only loader). Built-ins are
distribution "galmerge" at galmerge's version. When a checkpoint is loaded, `changes` compares
the record with what provides those names now: a build that fails gets the difference added
to its one-line error (`add_hint`), one that works warns once (`warn_changes`). A checkpoint
written before the record existed has none and loads as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from galmerge.errors import GalmergeError, PluginBug
from galmerge.plugin.manager import OWN_DISTRIBUTION as OWN
from galmerge.plugin.manager import PLURAL, get_plugin_manager

KEY = "plugin_versions"
KINDS = ("backbone", "strategy", "survey")

_warned: set[str] = set()  # warning lines printed by this process


def provider(kind: str, name: str) -> dict[str, str] | None:
    """ENTRY of the plugin that provides ``kind`` ``name`` now; None when none does."""
    manager = get_plugin_manager()
    try:
        manager.get(PLURAL[kind], name)
    except GalmergeError:  # unknown, or in a name clash
        return None
    info = manager.owner(PLURAL[kind], name)  # aliases too
    if info is None:
        return None
    return {"plugin": str(info.name), "distribution": str(info.distribution or ""),
            "version": str(info.version or "")}


def record(backbone: str, strategies: Iterable[str], surveys: Iterable[str]
           ) -> dict[str, dict[str, dict[str, str]]]:
    """`KEY`'s value for a run of these components (names no plugin provides are left out)."""
    wanted = {"backbone": [backbone], "strategy": list(strategies), "survey": list(surveys)}
    out: dict[str, dict[str, dict[str, str]]] = {}
    for kind, names in wanted.items():
        out[kind] = {}
        for name in dict.fromkeys(names):
            entry = provider(kind, name)
            if entry is not None:
                out[kind][str(name)] = entry
    return out


@dataclass(frozen=True)
class Change:
    """A distribution a checkpoint was trained with that is not what provides it now."""

    distribution: str
    trained: str  # the version it was trained with
    installed: str  # "0.3.0", "none", or "OTHER-DIST 1.0" where another distribution took over


def changes(recorded: Any, kinds: Iterable[str] = KINDS) -> list[Change]:
    """The distributions of ``recorded`` (a checkpoint's `KEY` value; anything else: none)
    whose components of ``kinds`` are now provided at another version, by another
    distribution, or not at all. A component missing while its distribution is installed at
    the recorded version (blocked, or failed to load) is no change: reinstalling would not
    help, and the manager has warned why."""
    found: dict[str, Change] = {}
    if not isinstance(recorded, Mapping):
        return []
    for kind in kinds:
        entries = recorded.get(kind)
        if not isinstance(entries, Mapping):
            continue
        for name, entry in entries.items():
            if not isinstance(name, str) or not isinstance(entry, Mapping):
                continue
            dist, version = entry.get("distribution"), entry.get("version")
            if not isinstance(dist, str) or not dist or not isinstance(version, str):
                continue  # trained with an in-process plugin of no distribution: nothing to say
            now = provider(kind, name)
            if now is None:
                current = _installed_version(dist)
                if current == version:
                    continue
                installed = current or "none"
            elif (now["distribution"], now["version"]) == (dist, version):
                continue
            elif now["distribution"] == dist:
                installed = now["version"] or "an unknown version"
            else:
                installed = " ".join(
                    v for v in (now["distribution"] or "an unknown distribution",
                                now["version"]) if v)
            found.setdefault(dist, Change(dist, version, installed))
    return list(found.values())


def describe(found: list[Change]) -> str:
    """``trained with galmerge-mcc 0.2.0; installed: 0.3.0; `galmerge install
    galmerge-mcc==0.2.0` restores it`` (several distributions: listed, restores them)."""
    trained = ", ".join(f"{c.distribution} {c.trained}" for c in found)
    if len(found) == 1:
        installed = found[0].installed
    else:
        installed = ", ".join(f"{c.distribution} {c.installed}" for c in found)
    # `galmerge install` adds plugins to galmerge's environment; galmerge itself is pip's job
    pins = [f"{c.distribution}=={c.trained}" for c in found
            if c.trained and c.distribution != OWN]
    restore = (f"; `galmerge install {' '.join(pins)}` restores "
               f"{'it' if len(pins) == 1 else 'them'}" if pins else "")
    own = [c for c in found if c.distribution == OWN and c.trained]
    if own:
        restore += f"; `pip install {OWN}=={own[0].trained}` restores {OWN}'s own"
    return f"trained with {trained}; installed: {installed}{restore}"


def add_hint(exc: BaseException, recorded: Any, kinds: Iterable[str] = KINDS) -> None:
    """Add to ``exc`` (a `GalmergeError` or `PluginBug` raised building a checkpoint's model
    or strategies) what the checkpoint was trained with and what is installed now, where they
    differ. The exception is kept (its type, cause and traceback): only its message grows."""
    if not isinstance(exc, GalmergeError | PluginBug) or not exc.args \
            or not isinstance(exc.args[0], str):
        return
    found = changes(recorded, kinds)
    if found:
        exc.args = (f"{exc.args[0]} ({describe(found)})", *exc.args[1:])


def warn_changes(recorded: Any, what: str, kinds: Iterable[str] = KINDS) -> None:
    """One warning line on stderr (once per process) when ``what`` (a checkpoint) loaded but
    was trained with other plugin versions than those installed."""
    # galmerge's own built-ins change with galmerge, whose upgrade notes say how: a warning on
    # every checkpoint after each upgrade would be noise (a build that fails still names it)
    found = [c for c in changes(recorded, kinds) if c.distribution != OWN]
    if not found:
        return
    line = (f"galmerge: warning: {what} was {describe(found)}; it loaded with the installed "
            f"{'version' if len(found) == 1 else 'versions'}, whose results may differ")
    # under torchrun every process loads the checkpoint: rank 0 alone says it (torchrun's RANK,
    # read here because galmerge.plugin sits beside galmerge.runtime, not above it)
    if line not in _warned and os.environ.get("RANK", "0").strip() in ("", "0"):
        _warned.add(line)
        print(line, file=sys.stderr)


def _installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except Exception:  # noqa: BLE001 - not installed, or metadata too broken to say
        return None


@contextmanager
def trained_with(checkpoint: Mapping[str, Any] | None, what: str,
                 kinds: Iterable[str] = KINDS) -> Iterator[None]:
    """Around building (and loading) what ``checkpoint`` holds: a plugin error inside gets
    what the checkpoint was trained with and what is installed now added to its one line;
    after a build that worked, one warning when those versions differ. None: no checkpoint."""
    recorded = checkpoint.get(KEY) if checkpoint is not None else None
    kinds = tuple(kinds)
    try:
        yield
    except (GalmergeError, PluginBug) as exc:
        add_hint(exc, recorded, kinds)
        raise
    warn_changes(recorded, what, kinds)
