"""The check of every command's --device, shared so that all refuse the same values alike."""

from __future__ import annotations

import click

from galmerge.runtime.devices import check_device_name


def checked_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: a bad --device (an empty or blank one too) is refused as the command
    line is read, since some commands reach the device only when a cache is missing."""
    if value is not None:
        check_device_name(value)
    return value
