"""Typed overrides for the frozen config dataclasses of models and training.

The same checks serve `--key=value` strings from the command line and values read back
from a run's config.json, so a setting that trains is a setting that reloads.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

Config = TypeVar("Config")
Item = TypeVar("Item")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ConfigError(ValueError):
    """A bad setting (unknown model or key, wrong type or value); the CLI prints it and exits 2."""


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotated type (int, float, bool, str or Literal[...]) of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def coerce(key: str, kind: Any, value: object) -> object:
    """`value` (a command-line string or a JSON value) as type `kind`, or a ConfigError naming `key`."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"--{key}={value!r}: expected {expected}")

    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"--{key}={value!r}: expected one of {', '.join(map(str, choices))}")
        return value
    # bool before int: in Python True is an int, and "--deterministic=1" must not pass for 1.
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise fail("true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise fail("an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise fail("a string")
    raise TypeError(f"config field {key} has an unsupported type {kind}")


def override(config: Config, values: Mapping[str, object]) -> Config:
    """A copy of `config` with `values` applied after type checks; unknown keys list the valid ones."""
    types = field_types(type(config))
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join('--' + key for key in unknown)} for {type(config).__name__}; "
            f"valid: {', '.join('--' + key for key in types)}"
        )
    return dataclasses.replace(config, **{key: coerce(key, types[key], value) for key, value in values.items()})


def from_dict(cls: type[Config], values: Mapping[str, object]) -> Config:
    """A config from its JSON form; missing keys take today's defaults, unknown keys are an error."""
    return override(cls(), values)


def check(condition: bool, message: str) -> None:
    """For `__post_init__` range checks: raise ConfigError(message) unless `condition`."""
    if not condition:
        raise ConfigError(message)


def comma_separated(key: str, value: str, kind: Callable[[str], Item], expected: str) -> tuple[Item, ...]:
    """A comma-separated setting --key=value as a tuple of `kind`, () when empty; a ConfigError
    that says it `expected` comma-separated ... (e.g. "numbers, e.g. 1,0.5") otherwise."""
    if not value:
        return ()
    try:
        return tuple(kind(part) for part in value.split(","))
    except ValueError:
        raise ConfigError(f"--{key}={value}: expected comma-separated {expected}") from None
