"""Plugin manager: the built-ins (`BUILTIN_PLUGINS`) and third-party plugins (entry points "galmerge").

Environment:
- ``GALMERGE_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name.
- ``GALMERGE_LOAD_PLUGINS=a,b`` loads only these third-party plugins (built-ins always load);
  set it empty to load none. Tests use it to keep a developer's installed plugins out.

A plugin that fails — raises anything at import (``sys.exit`` and ``KeyboardInterrupt``
included), or whose registration hook raises or returns something that is not a list of
records with usable names (docs/DESIGN.md "Names (contract)") — is skipped with one warning
naming it and how to block it; everything else works. A component name (or alias) registered
twice takes out only that name: a built-in's wins over a third-party plugin's (skipped with one
warning); two third-party plugins' clash is an error when the name is used (`NameClash`).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from galmerge.errors import PluginError
from galmerge.plugin import hookspecs
from galmerge.plugin.records import Backbone, Strategy, Survey

GROUP = "galmerge"
OWN_DISTRIBUTION = "galmerge"

# The built-in plugins, by entry-point-style name (what GALMERGE_DISABLE_PLUGINS blocks and
# `galmerge plugins` lists). The one list: galmerge declares no entry points for them, so they
# always come from the galmerge that is imported, never from an older install's metadata.
BUILTIN_PLUGINS: dict[str, str] = {
    "deepmerge_backbones": "galmerge.models.backbones.plugin",
    "da_strategies": "galmerge.losses.plugin",
    "synthetic_survey": "galmerge.surveys.synthetic.plugin",
    "hdf5_survey": "galmerge.surveys.hdf5.plugin",
    "illustris_survey": "galmerge.surveys.deepmerge.plugin",
    "sdss_survey": "galmerge.surveys.sdss.plugin",
}

# what a component name or alias must be (docs/DESIGN.md "Names (contract)"): user input is
# matched in lower case, ':' and '?' split a survey spec, '+' a strategy expression
_NAME_RULE = "a name is a non-empty lower-case string without spaces, ':', '?' or '+'"

SINGULAR = {"backbones": "backbone", "strategies": "strategy", "surveys": "survey"}
#: ``"backbone"`` -> ``"backbones"``: a component kind as `components` names it
PLURAL = {one: many for many, one in SINGULAR.items()}

KINDS = {
    "backbones": ("register_backbones", Backbone),
    "strategies": ("register_strategies", Strategy),
    "surveys": ("register_surveys", Survey),
}


@dataclass
class PluginInfo:
    """What `galmerge plugins` reports for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "components": self.components,
            "error": self.error,
        }


class NameClash(PluginError):
    """Two plugins register one component name; ``plugins``: their names."""

    def __init__(self, message: str, plugins: tuple[str, ...]) -> None:
        super().__init__(message)
        self.plugins = plugins


def _env_list(var: str) -> list[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


class PluginManager:
    """pluggy manager plus typed component registries (backbones, strategies, surveys)."""

    def __init__(self, load_entrypoints: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failed: list[PluginInfo] = []
        self._cache: dict[str, dict[str, Any]] = {}
        self._owner: dict[str, dict[str, str]] = {}
        self._clashed: set[str] = set()  # plugins whose error is a name clash
        self._clashes: dict[str, dict[str, NameClash]] = {}  # kind -> name -> its clash
        self._warned: set[tuple[str, str, str]] = set()  # (plugin, kind, name) warned about
        if load_entrypoints:
            self._load_entrypoints()

    # -- loading -----------------------------------------------------------------------
    def _load_entrypoints(self) -> None:
        blocked = set(_env_list("GALMERGE_DISABLE_PLUGINS") or [])
        allowed = _env_list("GALMERGE_LOAD_PLUGINS")
        for name in blocked:
            self.pm.set_blocked(name)
        for name, module in BUILTIN_PLUGINS.items():
            if name not in blocked:
                self._register_module(name, module, OWN_DISTRIBUTION, _own_version(), True)
        seen: set[str] = set()
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else None
            # galmerge's own entry points come from an install made before the built-ins moved
            # to BUILTIN_PLUGINS; the same distribution visible twice on sys.path is loaded once
            # (a third-party plugin named like a built-in fails to register, with a warning)
            if dist == OWN_DISTRIBUTION or ep.name in seen:
                continue
            seen.add(ep.name)
            version = ep.dist.version if ep.dist is not None else None
            if ep.name in blocked:
                continue
            if allowed is not None and ep.name not in allowed:
                continue
            self._register_module(ep.name, ep.value, dist, version, False, ep=ep)

    def _register_module(
        self,
        name: str,
        target: str,
        dist: str | None,
        version: str | None,
        builtin: bool,
        ep: metadata.EntryPoint | None = None,
    ) -> None:
        info = PluginInfo(name=name, distribution=dist, version=version, builtin=builtin)
        try:
            plugin = ep.load() if ep is not None else importlib.import_module(target)
            self.register(plugin, name=name, info=info)
        # a broken plugin must never take the others down: not even sys.exit() or a
        # KeyboardInterrupt raised by its import (which would end every command, --help too)
        except BaseException as exc:  # noqa: BLE001
            info.error = _describe_error(exc)
            self.failed.append(info)
            _warn_skipped(name, dist, "failed to load", info.error)

    def _skip(self, name: str, what: str, error: str) -> None:
        """Take a registered plugin out after one of its hooks failed; warn once."""
        info = self.infos.pop(name, None) or PluginInfo(
            name=name, distribution=None, version=None, builtin=False)
        info.error = error
        info.components = {}  # what it registered before this hook failed is gone with it
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        self.failed.append(info)
        self._cache.clear()
        _warn_skipped(name, info.distribution, what, error)

    def _call(self, impl: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Call one plugin's hook; (False, None) after skipping the plugin when it raised."""
        try:
            return True, impl.function(*[kwargs[a] for a in impl.argnames])
        except BaseException as exc:  # noqa: BLE001  (see _register_module)
            self._skip(impl.plugin_name, f"failed in {impl.function.__name__}",
                       _describe_error(exc))
            return False, None

    def register(self, plugin: object, name: str, info: PluginInfo | None = None) -> None:
        """Register a plugin object in-process; a hookimpl that matches no hook is an error.

        A name registered before (a notebook cell run again, edited or not) is replaced: the
        old plugin and what it registered are gone. A built-in plugin's name is refused (the
        built-ins always win)."""
        if self.pm.is_blocked(name):
            return
        old = self.infos.get(name)
        if old is not None and old.builtin:
            raise PluginError(f"plugin name '{name}' is one of galmerge's built-in plugins; "
                              "register yours under another name")
        if self.pm.has_plugin(name):
            self.unregister(name)
        self.failed = [f for f in self.failed if f.name != name]  # an earlier try's error
        self.pm.register(plugin, name=name)
        try:
            self._check_hook_names(name, plugin)
        except PluginError:
            self.pm.unregister(name=name)
            raise
        self.infos[name] = info or PluginInfo(
            name=name, distribution=None, version=None, builtin=False
        )
        self.infos[name].hooks = sorted(
            h.name for h in self.pm.get_hookcallers(plugin) or []
        )
        self._cache.clear()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.infos.pop(name, None)
        self._cache.clear()

    def _check_hook_names(self, name: str, plugin: object) -> None:
        known = {n for n in dir(hookspecs) if n.startswith("register_")}
        for attr in dir(plugin):
            func = getattr(plugin, attr, None)
            if not callable(func) or not hasattr(func, f"{hookspecs.PROJECT}_impl"):
                continue
            # pluggy's @hookimpl(specname="register_surveys") implements the hook it names
            opts = getattr(func, f"{hookspecs.PROJECT}_impl", None)
            hook = (opts.get("specname") if isinstance(opts, dict) else None) or attr
            if hook not in known:
                hint = _closest(hook, known)
                raise PluginError(
                    f"plugin '{name}' implements '{hook}', which is no galmerge hook"
                    + (f" (did you mean '{hint}'?)" if hint else "")
                    + f"; known hooks: {', '.join(sorted(known))}"
                )

    # -- components --------------------------------------------------------------------
    def components(self, kind: str) -> dict[str, Any]:
        """All records of one kind (``backbones``, ``strategies``, ``surveys``) by name.

        A name (or alias) registered twice never takes the other components down: where a
        built-in owns it, the built-in wins and the third-party record is skipped with a
        one-line warning; where two third-party plugins (or two built-ins) register it, both
        records are left out and looking up any of their names raises `NameClash`, naming
        both plugins (`galmerge plugins` shows it as both plugins' error)."""
        if kind in self._cache:
            return self._cache[kind]
        hook_name, record_type = KINDS[kind]
        claims: list[tuple[str, Any]] = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            called, result = self._call(impl)
            records, error = _records(result, record_type) if called else (None, "")
            if records is None:
                if called:
                    self._skip(impl.plugin_name, f"failed in {hook_name}", error)
                return self.components(kind)  # again, without that plugin
            claims += [(impl.plugin_name, record) for record in records]
        by_name: dict[str, list[tuple[str, Any]]] = {}
        for plugin, record in claims:
            for n in dict.fromkeys([record.name, *getattr(record, "aliases", ())]):
                by_name.setdefault(n, []).append((plugin, record))
        dropped: set[int] = set()  # id() of records left out
        clash_of: dict[int, NameClash] = {}  # id() of a record left out in a clash -> it
        singular = SINGULAR.get(kind, kind)
        for n, owners in by_name.items():
            if len(owners) < 2:
                continue
            plugins = list(dict.fromkeys(p for p, _ in owners))
            builtins = [p for p in plugins if self._builtin(p)]
            if len(builtins) == 1 and len(plugins) > 1:
                for plugin, record in owners:
                    if plugin != builtins[0] and id(record) not in dropped:
                        dropped.add(id(record))
                        self._warn_once(plugin, kind, record.name,
                                        f"registers {singular} '{n}', which galmerge's "
                                        f"built-in plugin '{builtins[0]}' owns; its {singular} "
                                        f"'{record.name}' was skipped")
                continue
            who = (f"two plugins: {self._describe(plugins[0])} and {self._describe(plugins[1])}"
                   if len(plugins) > 1 else f"plugin {self._describe(plugins[0])} twice")
            clash = NameClash(f"{singular} name '{n}' is registered by {who}; uninstall one or "
                              "block it with GALMERGE_DISABLE_PLUGINS=<name>", tuple(plugins[:2]))
            for _plugin, record in owners:
                dropped.add(id(record))
                clash_of.setdefault(id(record), clash)
            for plugin in plugins[:2]:
                others = " and ".join(self._describe(p) for p in plugins if p != plugin)
                self._warn_once(plugin, kind, n,
                                f"registers {singular} '{n}' as {others or 'it'} does too; "
                                "that name is left out (using it is an error)")
        found: dict[str, Any] = {}
        owner: dict[str, str] = {}
        clashes: dict[str, NameClash] = {}
        for plugin, record in claims:
            names = [record.name, *getattr(record, "aliases", ())]
            if id(record) in clash_of:  # each of its names answers with the clash
                for n in names:
                    clashes.setdefault(n, clash_of[id(record)])
            if id(record) in dropped:
                continue
            for n in names:
                owner[n] = plugin
            found[record.name] = record
        for plugin_name, info in self.infos.items():
            info.components[kind] = sorted(
                n for n, p in owner.items() if p == plugin_name and n in found
            )
        self._cache[kind] = dict(sorted(found.items()))
        self._owner[kind] = owner
        self._clashes[kind] = clashes
        return self._cache[kind]

    def _builtin(self, plugin: str) -> bool:
        info = self.infos.get(plugin)
        return bool(info and info.builtin)

    def _warn_once(self, plugin: str, kind: str, name: str, what: str) -> None:
        if (plugin, kind, name) in self._warned:
            return
        self._warned.add((plugin, kind, name))
        info = self.infos.get(plugin)
        dist = info.distribution if info else None
        print(f"galmerge: warning: plugin '{plugin}' ({dist or 'unknown distribution'}) {what}; "
              f"block it with GALMERGE_DISABLE_PLUGINS={plugin}", file=sys.stderr)

    def owner(self, kind: str, name: str) -> PluginInfo | None:
        self.components(kind)
        plugin = self._owner[kind].get(name)
        return self.infos.get(plugin) if plugin else None

    def describe_owner(self, kind: str, name: str) -> str:
        """``plugin 'NAME' (distribution)`` that registered a component, for messages."""
        info = self.owner(kind, name)
        return f"plugin {self._describe(info.name)}" if info else "an unknown plugin"

    def get(self, kind: str, name: str) -> Any:
        """One record by name or alias; an unknown name lists what exists."""
        records = self.components(kind)
        if name in records:
            return records[name]
        if name in self._clashes.get(kind, {}) and name not in self._owner.get(kind, {}):
            raise self._clashes[kind][name]
        for record in records.values():
            if name in getattr(record, "aliases", ()):
                return record
        available = ", ".join(records) or "none"
        raise PluginError(
            f"unknown {SINGULAR.get(kind, kind)} '{name}'; available: {available} "
            f"(see `galmerge list {kind}`)"
        )

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin, loaded or failed; a name clash is the ``error`` of both plugins."""
        for name in self._clashed:  # found by an earlier call; looked for again below
            if name in self.infos:
                self.infos[name].error = None
        self._clashed = set()
        for kind in KINDS:
            try:
                self.components(kind)
            except PluginError:
                continue
            for clash in self._clashes.get(kind, {}).values():
                for name in clash.plugins:
                    info = self.infos.get(name)
                    if info is not None and info.error is None:
                        info.error = str(clash)
                        self._clashed.add(name)
        return sorted([*self.infos.values(), *self.failed], key=lambda i: (not i.builtin, i.name))

    def add_commands(self, cli: Any, reserved: Iterable[str] = ()) -> None:
        """Let each plugin add its commands to ``cli`` (a click group). A command named like
        one in ``reserved`` (the built-in commands) is taken out again with one warning
        naming the plugin: the built-in always runs."""
        reserved = set(reserved)
        commands = getattr(cli, "commands", None)
        for impl in self.pm.hook.register_commands.get_hookimpls():
            before = dict(commands) if isinstance(commands, dict) else {}
            self._call(impl, cli=cli)
            if not isinstance(commands, dict):
                continue
            for name in [n for n, c in commands.items() if before.get(n) is not c]:
                if name not in reserved:
                    continue
                if name in before:
                    commands[name] = before[name]
                else:
                    del commands[name]
                self._warn_once(impl.plugin_name, "commands", name,
                                f"adds command '{name}', which is a built-in command; the "
                                "plugin's command was ignored")

    def _describe(self, plugin_name: str) -> str:
        info = self.infos.get(plugin_name)
        dist = info.distribution if info and info.distribution else "no distribution"
        return f"'{plugin_name}' ({dist})"


def _records(result: Any, record_type: type) -> tuple[list[Any] | None, str]:
    """(the records a hook returned, "") or (None, why its plugin is skipped)."""
    expected = f"expected a list of galmerge.plugin.records.{record_type.__name__}"
    try:
        records = _flatten(result)
    # a generator hook runs here: what it raises skips the plugin as `_call` does for a plain
    # hook (SystemExit and KeyboardInterrupt included)
    except BaseException as exc:  # noqa: BLE001
        return None, _describe_error(exc)
    if records is None:
        return None, f"returned {type(result).__name__}; {expected}"
    for record in records:
        if not isinstance(record, record_type):
            return None, f"returned {type(record).__name__}; {expected}"
        kind = record_type.__name__
        if not _usable_name(record.name):
            return None, f"returned a {kind} whose name is {_show(record.name)}; {_NAME_RULE}"
        aliases = getattr(record, "aliases", ())
        if not isinstance(aliases, tuple | list):  # a bare str would be one alias per letter
            return None, (f"returned {kind} '{record.name}' with aliases {_show(aliases)}; "
                          "aliases are a tuple of names")
        for alias in aliases:
            if not _usable_name(alias):
                return None, (f"returned {kind} '{record.name}' with alias {_show(alias)}; "
                              f"{_NAME_RULE}")
    return records, ""


def _usable_name(name: Any) -> bool:
    """Whether a component name or alias can be typed and found (`_NAME_RULE`)."""
    return (isinstance(name, str) and bool(name) and name == name.lower()
            and not any(c.isspace() or c in ":?+" for c in name))


def _show(value: Any) -> str:
    """A plugin's value for a one-line warning: short scalars as written, else their type."""
    if isinstance(value, str | int | float | None) and len(repr(value)) <= 40:
        return repr(value)
    return type(value).__name__


def _flatten(result: Any) -> list[Any] | None:
    """The records a hook returned; None when that is not a record or an iterable of them."""
    if result is None:
        return []
    if isinstance(result, (Backbone, Strategy, Survey)):
        return [result]
    if isinstance(result, str | bytes | dict):
        return None
    try:
        items = iter(result)
    except TypeError:  # 42
        return None
    return list(items)  # a generator's own error propagates, to be named in the warning


def _describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()
    return text[0] if text else type(exc).__name__


def _warn_skipped(name: str, dist: str | None, what: str, error: str) -> None:
    print(f"galmerge: warning: plugin '{name}' ({dist or 'unknown distribution'}) {what} and was "
          f"skipped ({error}); block it with GALMERGE_DISABLE_PLUGINS={name}", file=sys.stderr)


def _closest(name: str, options: Iterable[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return match[0] if match else None


def _own_version() -> str:
    from galmerge import __version__

    return __version__


_manager: PluginManager | None = None
_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset_plugin_manager() -> None:
    """Forget the manager so the next call reloads plugins (tests, changed environment)."""
    global _manager
    with _lock:
        _manager = None

