"""Option schemas of backbones, strategies and surveys, checked in one place (no torch import).

A plugin declares each option once, as an `Option` (default, type, help, allowed values) in its
record's ``options``; the core checks what a user gives against it (`check_options`) before the
plugin's ``build``/``load``/``cutouts`` sees it, so a plugin receives complete, typed values.
Records that declare only ``defaults`` (the older form) get a schema made from them
(`schema_from_defaults`): the type of each default, no help.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from galmerge.errors import GalmergeError

_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


@dataclass(frozen=True)
class Option:
    """One option: its default, type (None: the default's; anything when that is None too;
    ``object``: any value, which the plugin checks itself), a help line for ``galmerge list``,
    and the values allowed (``choices``; numbers from ``min`` up to ``max``, or below
    ``below``)."""

    default: Any
    help: str = ""
    type: type | None = None
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    below: float | None = None

    @property
    def kind(self) -> type | None:
        if self.type is not None:
            return self.type
        return None if self.default is None else type(self.default)

    def describe(self) -> str:
        """``float = 0.5 in [0, 1): why`` (or ``>= 0``, ``one of a, b``) for listings."""
        kind = self.kind if self.kind is not object else type(self.default)
        name = "any" if kind in (None, type(None)) else kind.__name__
        text = f"{name} = {self.default!r}"
        if self.choices:
            text += f" (one of {', '.join(map(str, self.choices))})"
        high = f"{self.max:g}]" if self.max is not None else (
            f"{self.below:g})" if self.below is not None else None)
        if self.min is not None and high is not None:
            text += f" in [{self.min:g}, {high}"
        elif self.min is not None:
            text += f", >= {self.min:g}"
        elif high is not None:
            text += f", {'<=' if self.max is not None else '<'} {high[:-1]}"
        return f"{text}: {self.help}" if self.help else text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Option:
        """The inverse of `as_dict` (``galmerge list`` rebuilds options from its rows)."""
        return cls(data["default"], data.get("help") or "",
                   _TYPES.get(str(data.get("type")), object if data.get("type") is None
                              and data["default"] is not None else None),
                   tuple(data.get("choices") or ()), data.get("min"), data.get("max"),
                   data.get("below"))

    def as_dict(self) -> dict[str, Any]:
        kind = self.kind
        return {"default": self.default,
                "type": kind.__name__ if kind not in (None, object) else None,
                "help": self.help, "choices": list(self.choices) or None, "min": self.min,
                "max": self.max, "below": self.below}


#: the retry settings of a cutout service (`galmerge.RetryPolicy.from_options` reads them; their
#: defaults are RetryPolicy's), for a survey's ``cutout_options``:
#: ``{**RETRY_OPTIONS, "layer": Option(...)}``
RETRY_OPTIONS: dict[str, Option] = {
    "attempts": Option(5, "tries per request", min=1),
    "retries": Option(None, "retries per request (attempts - 1)", type=int, min=0),
    "timeout": Option(60.0, "seconds to wait for an answer", min=0),
    "deadline": Option(None, "seconds per transfer (default 4 x timeout)", type=float, min=0),
    "backoff": Option(0.5, "first wait between tries, seconds (doubles)", min=0),
    "backoff_max": Option(30.0, "longest wait between tries, seconds", min=0),
    "jitter": Option(0.25, "random share added to each wait", min=0, max=1),
    "max_retry_after": Option(300.0, "longest Retry-After honoured, seconds", min=0),
    "seed": Option(0, "seed of the jitter"),
    "max_connection_failures": Option(None, "failures in a row without an answer before the "
                                      "host counts as unreachable (default 10)", type=int, min=0),
    "max_failed_requests": Option(None, "requests in a row failing after all their tries before "
                                  "fetching stops (default 20; 0: never)", type=int, min=0),
}


def plain(value: Any) -> Any:
    """``value`` with numpy (or other `numbers`) scalars as plain ``int``/``float``/``bool``, in
    nested mappings and lists too: a notebook's ``np.int64(1)`` or ``np.float32(1e-3)`` is the
    number it holds, and config.toml (tomli_w) and the checks here take only plain ones."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    return value


def plain_number(name: str, value: Any, *, whole: bool = False, optional: bool = False) -> Any:
    """A Python API argument that takes a number (``whole``: a whole number; ``optional``: or
    None) as a plain ``int``/``float``: numpy numbers through `plain`, as `train` takes them.
    Anything else (a string, a bool, a fraction or a float where a whole number is due) is a
    one-line GalmergeError naming the argument, worded as `train`'s (``epochs must be a whole
    number``); the CLI's typed options always pass this check."""
    number = plain(value)
    if number is None and optional:
        return None
    if not isinstance(number, bool) and (
            isinstance(number, int) or not whole and isinstance(number, float)):
        return number
    kind = "a whole number" if whole else "a number"
    hint = ""
    if isinstance(number, str):  # "64": text of a number, e.g. read from a file or a widget
        try:
            parsed = int(number) if whole else float(number)
            hint = f"; give the number itself, {name}={parsed!r}"
        except ValueError:
            pass
    elif whole and isinstance(number, float) and number.is_integer():
        hint = f"; give it as an int, {name}={int(number)}"
    raise GalmergeError(f"{name} must be {kind}{' or None' if optional else ''}, got "
                        f"{value!r}{hint}")


def schema_from_defaults(defaults: Mapping[str, Any]) -> dict[str, Option]:
    """The schema of a record that declares only default values."""
    return {k: v if isinstance(v, Option) else Option(v) for k, v in defaults.items()}


def check_options(kind: str, name: str, schema: Mapping[str, Option],
                  given: Mapping[str, Any] | None, *, fill: bool = True,
                  label: str | None = None) -> dict[str, Any]:
    """The options of one component, checked against its schema: defaults overlaid with
    ``given`` (only ``given`` when ``fill`` is false), each value coerced to its type (``"0.5"``
    from a command line works for a float, an int for a float) and within its allowed values.

    Every problem is a one-line GalmergeError naming the option, the component (``label``, a
    survey spec, else ``kind 'name'``) and what is allowed.
    """
    given = dict(given or {})
    what = label or f"{kind} '{name}'"
    unknown = sorted(set(given) - set(schema))
    if unknown and label is not None:  # a survey spec: "hdf5:x.h5: unknown option 'y'"
        hint = difflib.get_close_matches(unknown[0], list(schema), n=1)
        raise GalmergeError(f"{label}: unknown option {unknown[0]!r}"
                            + (f" (did you mean '{hint[0]}'?)" if hint else "")
                            + f"; valid options: {', '.join(schema)}")
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(schema), n=1)
        raise GalmergeError(
            f"unknown option(s) {', '.join(unknown)} for {what}"
            + (f" (did you mean '{hint[0]}'?)" if hint else "")
            + f"; known: {', '.join(sorted(schema)) or 'none'}")
    out = {k: o.default for k, o in schema.items()} if fill else {}
    for key, value in given.items():
        out[key] = _check(what, key, plain(value), schema[key])
    return out


def _bounds(option: Option) -> str:
    """``>= 0 and <= 1`` (or ``< 5``): the numbers ``option`` allows; empty when unbounded."""
    low, high, below = option.min, option.max, option.below
    return " and ".join(part for part in (f">= {low:g}" if low is not None else "",
                                          f"<= {high:g}" if high is not None else "",
                                          f"< {below:g}" if below is not None else "") if part)


def _check(what: str, key: str, value: Any, option: Option) -> Any:
    value = _coerce(what, key, value, option.kind, _bounds(option))
    if value is None:
        return value
    if option.choices and value not in option.choices:
        raise GalmergeError(f"{what}: option {key} must be one of "
                            f"{', '.join(map(str, option.choices))}; got {key} {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high, below = option.min, option.max, option.below
        if (not math.isfinite(value) and (low is not None or high is not None
                                          or below is not None)) \
                or (low is not None and value < low) or (high is not None and value > high) \
                or (below is not None and value >= below):
            raise GalmergeError(f"{what}: option {key} must be {_bounds(option)}, "
                                f"got {value!r}")
    return value


def _coerce(what: str, key: str, value: Any, kind: type | None, bounds: str = "") -> Any:
    if kind in (None, object) or value is None or (
        isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    ):
        return value
    try:
        if kind is bool:  # 0 and 1 too: a spec's ?check_finite=0 arrives as the int 0
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError
            if kind is int and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return kind(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    valid = f"; valid: {kind.__name__} {bounds}" if bounds else ""  # the range too, if any
    if kind is bool:
        valid = "; use true or false (or 1 or 0)"
    raise GalmergeError(f"option '{key}' of {what} must be {kind.__name__}, got {value!r}{valid}")


def resolve_options(
    strategy: str, defaults: Mapping[str, Any], options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Defaults overlaid with ``options``; unknown keys and values of the wrong type are errors.

    For plugins that check their options themselves (the core already does it against the
    record's schema before ``build``: see `check_options`). A ``weight`` must be >= 0.
    """
    schema = schema_from_defaults(defaults)
    if "weight" in schema:
        schema["weight"] = Option(schema["weight"].default, min=0.0)
    return check_options("strategy", strategy, schema, options)


def warmup_factor(progress: float, warmup: float) -> float:
    """DANN-style ramp 2 / (1 + exp(-γ p)) - 1 of training progress p ∈ [0, 1], γ = ``warmup``.

    ``warmup`` = 0 switches the ramp off (factor 1 from the first step). A term multiplied by it
    starts at 0, while the classifier's features are still random, and reaches ~1 once
    p ≳ 3/γ (γ = 10: 0.46 at p = 0.1, 0.96 at p = 0.4), so one weight suits backbones whose
    early features differ in scale (Ganin et al. 2016 ramp the gradient reversal this way).
    """
    if warmup <= 0:
        return 1.0
    import math

    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-float(warmup) * p)) - 1.0
