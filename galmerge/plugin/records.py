"""Typed records that plugins return from the registration hooks.

Each record may declare its options as a schema (``options``: name -> `Option`, with default,
type and help); the core checks the options a user gives against it before calling the
plugin's ``build`` (backbones, strategies) or ``load``/``cutouts`` (surveys), so the plugin gets
complete, typed values and need not check names or types itself. ``defaults`` (name -> value)
is the older, schema-less form and is still accepted; each form is derived from the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from galmerge.errors import GalmergeError, PluginBug, PluginError
from galmerge.plugin.options import Option, check_options, plain, schema_from_defaults

if TYPE_CHECKING:
    from torch import nn

    from galmerge.plugin.cutouts import CutoutService
    from galmerge.plugin.imageset import ImageSet
    from galmerge.plugin.strategy_api import StrategyContext


@dataclass(frozen=True)
class Backbone:
    """A feature extractor.

    ``build(in_channels, image_size, **options)`` returns an ``nn.Module`` whose forward maps
    images (N, C, H, W) to features (N, out_features) and that exposes ``out_features``.
    ``build_head(out_features, num_classes)`` returns the classifier on top (default: Linear).
    The module may define ``init_head(head)`` (called once the head is built).
    ``search_space`` declares the options `galmerge tune` searches (see `Strategy`).

    Learning-rate multipliers: the built module may set ``lr_multipliers: dict[str, float]``
    (a parameter-name prefix inside the module, e.g. ``"bottleneck"``, -> factor on the run's lr)
    and ``head_lr_multiplier: float`` (the classifier head's factor). Users override them with
    ``--set lr_multipliers.model.backbone.PREFIX=X`` / ``lr_multipliers.model.head=X``.
    """

    name: str
    description: str
    build: Callable[..., nn.Module]
    build_head: Callable[[int, int], nn.Module] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    options: Mapping[str, Option] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _schema(self)
        plugin_build = self.build

        def build(in_channels: int, image_size: int, **options: Any) -> nn.Module:
            checked = self.check(options)
            net = _plugin_call("backbone", self.name, "build", plugin_build,
                               in_channels, image_size, **checked)
            _expect_module("backbone", self.name, net)
            width = getattr(net, "out_features", None)
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise plugin_bug("backbone", self.name,
                           f"build returned a {type(net).__name__} whose out_features is "
                           f"{_shown(width)}; a backbone module exposes out_features, the "
                           "width of its features (an int >= 1)")
            return net

        object.__setattr__(self, "build", build)

    def check(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``options``, checked against the schema (one-line errors)."""
        return check_options("backbone", self.name, self.options, options)


@dataclass(frozen=True)
class Strategy:
    """A domain-adaptation strategy contributing named loss terms.

    ``build(context, options)`` returns an ``nn.Module`` whose ``forward(step: StepInputs)``
    returns ``{term_name: scalar tensor}``; the trainer adds ``weight * term`` to the loss and
    optimises the module's own parameters (a discriminator, class centres) too.
    ``defaults`` lists every option with its default value (``weight`` included).
    ``search_space`` maps options to the ranges `galmerge tune` searches, e.g.
    ``{"weight": {"type": "float", "low": 0.01, "high": 3.0, "log": True}}`` (types: float,
    int with low/high/log, categorical with choices); options left out keep their value.

    ``needs_target``: whether the module reads the target batch. When no strategy of a run does,
    target images are never forwarded during training (source-only; ``StepInputs``' target
    tensors are then empty).

    ``target_encoder``: the layout the strategy's defaults were chosen for, "shared" or
    "separate" (the target's own encoder, ADDA's layout). With the config's
    ``target_encoder = "auto"`` (the default) a run gets its own target encoder when every
    strategy of it that reads the target says "separate"; the module learns the run's layout
    from ``StrategyContext.target_encoder``.

    Learning-rate multipliers: the built module may set ``lr_multipliers: dict[str, float]``
    (a parameter-name prefix inside the module, e.g. ``"centers"``, -> factor on the run's lr);
    users override them with ``--set lr_multipliers.NAME.PREFIX=X``.
    """

    name: str
    description: str
    build: Callable[[StrategyContext, Mapping[str, Any]], nn.Module]
    defaults: Mapping[str, Any] = field(default_factory=lambda: {"weight": 1.0})
    aliases: tuple[str, ...] = ()
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    needs_target: bool = True
    options: Mapping[str, Option] = field(default_factory=dict)
    target_encoder: str = "shared"

    def __post_init__(self) -> None:
        _schema(self, {"weight": Option(1.0, "factor of this strategy's terms in the loss",
                                        min=0.0)})
        plugin_build = self.build

        def build(context: StrategyContext, options: Mapping[str, Any]) -> nn.Module:
            checked = self.check(options)
            module = _plugin_call("strategy", self.name, "build", plugin_build, context, checked)
            _expect_module("strategy", self.name, module)
            return module

        object.__setattr__(self, "build", build)

    def check(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``options``, checked against the schema (one-line errors)."""
        return check_options("strategy", self.name, self.options, options)


@dataclass(frozen=True)
class Survey:
    """A data source.

    ``load(arg, options)`` returns a labelled ``ImageSet`` (``arg`` is the part after the colon
    in ``NAME:ARG``, or None). ``cutouts(preprocess, options)`` returns a ``CutoutService`` that
    fetches stamps for catalog positions, for surveys with an image service.

    ``arg_is_path``: ``ARG`` names a file or folder (``hdf5:PATH``). A run then records it as
    an absolute path (``~`` expanded, resolved against the folder galmerge runs in) in its
    config.toml, so that the run resumes, evaluates and is reused from any folder; ``load``
    gets the absolute path too.
    """

    name: str
    description: str
    load: Callable[[str | None, Mapping[str, Any]], ImageSet] | None = None
    cutouts: Callable[[Mapping[str, Any], Mapping[str, Any]], CutoutService] | None = None
    presets: tuple[str, ...] = ()
    #: schemas of ``load``'s and ``cutouts``' options; empty: the survey checks its own
    options: Mapping[str, Option] = field(default_factory=dict)
    cutout_options: Mapping[str, Option] = field(default_factory=dict)
    arg_is_path: bool = False

    def __post_init__(self) -> None:
        plugin_load, plugin_cutouts = self.load, self.cutouts
        if plugin_load is not None:
            def load(arg: str | None, options: Mapping[str, Any]) -> ImageSet:
                from galmerge.plugin.imageset import ImageSet

                label = f"{self.name}:{arg}" if arg else self.name
                checked = self.check(options, label)
                # a file the user named that cannot be read is their mistake, not a bug
                imageset = _plugin_call("survey", self.name, "load", plugin_load, arg, checked,
                                        reading=label)
                if not isinstance(imageset, ImageSet):
                    raise plugin_bug("survey", self.name, f"load returned {_shown(imageset)}; "
                               "a survey's load returns a galmerge.ImageSet")
                return imageset

            object.__setattr__(self, "load", load)
        if plugin_cutouts is not None:
            def cutouts(preprocess: Mapping[str, Any], options: Mapping[str, Any]
                        ) -> CutoutService:
                # TypeError and ValueError stay as they are: classify reports them as a bad
                # option value (e.g. RetryPolicy.from_options refusing timeout=0)
                service = plugin_cutouts(preprocess, self.check(options, self.name,
                                                                cutouts=True))
                missing = [m for m in ("fetch", "close")
                           if not callable(getattr(service, m, None))]
                if missing:
                    raise plugin_bug("survey", self.name,
                               f"cutouts returned {_shown(service)}, which has no "
                               f"{' or '.join(f'{m}()' for m in missing)}; a survey's cutouts "
                               "returns a galmerge.CutoutService")
                return service

            object.__setattr__(self, "cutouts", cutouts)

    def check(self, options: Mapping[str, Any] | None, label: str, *,
              cutouts: bool = False) -> dict[str, Any]:
        """Names and types of the options given to ``load`` (``cutouts``: to ``cutouts``)
        checked against the schema, when the survey declares one; values not given stay
        unset (a survey may tell "not given" from its default). ``label``: the spec, for
        messages."""
        schema = self.cutout_options if cutouts else self.options
        if not schema:
            return plain(dict(options or {}))
        return check_options("survey", self.name, schema, options, fill=False, label=label)


def _schema(record: Any, implied: Mapping[str, Option] | None = None) -> None:
    """Fill ``options`` from ``defaults`` or ``defaults`` from ``options`` (frozen record)."""
    options = dict(record.options) or schema_from_defaults(record.defaults)
    for key, option in (implied or {}).items():  # e.g. a strategy's weight: >= 0
        current = options.get(key)
        if current is not None and not record.options:
            options[key] = Option(current.default, option.help, option.type, option.choices,
                                  option.min, option.max, option.below)
        elif current is not None and current.min is None:  # declared without a lower bound
            options[key] = replace(current, min=option.min, help=current.help or option.help)
    object.__setattr__(record, "options", options)
    object.__setattr__(record, "defaults", {k: o.default for k, o in options.items()})
    # the plugin's own search space names its own options: a typo there is the plugin's, found
    # when it registers (the plugin is skipped with a warning), not at tune time as the user's
    unknown = [k for k in dict(record.search_space or {}) if k not in options]
    if unknown:
        import difflib

        hint = difflib.get_close_matches(str(unknown[0]), list(options), n=1)
        kind = type(record).__name__.lower()
        raise PluginError(
            f"{kind} '{record.name}' has search_space option(s) "
            f"{', '.join(map(str, unknown))}, which it does not declare"
            + (f" (did you mean '{hint[0]}'?)" if hint else "")
            + f"; its options: {', '.join(options) or 'none'}")


def _owner(kind: str, name: str) -> str:
    """``plugin 'NAME' (distribution)`` that registered a component, for messages."""
    from galmerge.plugin.manager import PLURAL, get_plugin_manager

    try:
        return get_plugin_manager().describe_owner(PLURAL[kind], name)
    except Exception:  # noqa: BLE001 - a message must not fail on its way out
        return "an unknown plugin"


def _shown(value: Any) -> str:
    if value is None or isinstance(value, bool | int | float) and len(repr(value)) <= 40:
        return repr(value)
    return f"a {type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")


def plugin_bug(kind: str, name: str, what: str) -> PluginBug:
    """A `PluginBug` for ``kind`` ``name`` (``"backbone"``, ``"strategy"``, ``"survey"``) that
    names the plugin which registered it: ``what`` went wrong, and it is the plugin's to fix."""
    return PluginBug(f"{kind} '{name}' ({_owner(kind, name)}): {what}; that is a bug in the "
                     "plugin: report it to the plugin's authors")


def _plugin_call(kind: str, name: str, what: str, func: Callable[..., Any], *args: Any,
                 reading: str | None = None, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)``, a plugin's build or load: a GalmergeError (a one-line user
    error) passes; any other exception is a `PluginBug` naming the component and its plugin,
    with the plugin's traceback as its cause. An OSError (no such file, no network) is no
    bug: a one-line error naming the spec a load reads (``reading``), else the component."""
    try:
        return func(*args, **kwargs)
    except (GalmergeError, PluginBug):
        raise
    except OSError as exc:
        if reading is None:  # e.g. pretrained weights that could not be downloaded or read
            raise GalmergeError(f"{kind} '{name}' ({_owner(kind, name)}): {what} could not "
                                f"read or fetch what it needs ({type(exc).__name__}: {exc})"
                                .splitlines()[0][:300]) from None
        raise GalmergeError(f"{reading}: cannot read it ({type(exc).__name__}: {exc})"
                            .splitlines()[0][:300]) from None
    except Exception as exc:
        raise plugin_bug(kind, name, f"{what} raised {type(exc).__name__}: {exc}"
                   .splitlines()[0][:300] + " (its traceback is above)") from exc


def _expect_module(kind: str, name: str, value: Any) -> None:
    from torch import nn

    if not isinstance(value, nn.Module):
        raise plugin_bug(kind, name, f"build returned {_shown(value)}; it returns a torch.nn.Module")
