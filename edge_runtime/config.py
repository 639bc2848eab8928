"""TOML configuration with environment overrides, checked field by field.

A file is a set of tables (``[device]``, ``[broker]``, ...), each read into
a dataclass. Any key can be overridden by ``TINYFED_<TABLE>_<KEY>`` (for
example ``TINYFED_BROKER_URL``, ``TINYFED_BROKER_PASSWORD``), so secrets
and per-board ids need not live in the file. Unknown tables or keys and
values of the wrong type are errors that name the file, the table and the
key: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import TinyfedError

if TYPE_CHECKING:
    from .transport.broker_config import BrokerConfig

ENV_PREFIX = "TINYFED"
T = TypeVar("T")


class ConfigError(ValueError, TinyfedError):
    """A configuration file or override is unreadable or wrong; the message names where."""


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such configuration file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for t in typing.get_args(annotation))
    return (annotation,)


def _from_env(text: str, allowed: tuple[type, ...], where: str) -> Any:
    if type(None) in allowed and text == "":
        return None
    for kind in allowed:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
        elif kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        elif kind is str:
            return text
    raise ConfigError(f"{where}={text!r}: expected {' or '.join(t.__name__ for t in allowed)}")


def _check(value: Any, allowed: tuple[type, ...], where: str) -> Any:
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{where}: expected {' or '.join(t.__name__ for t in allowed)}, got a boolean")
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed and int not in allowed:
        return float(value)
    if any(isinstance(value, t) for t in allowed if t is not type(None)):
        return value
    raise ConfigError(
        f"{where}: expected {' or '.join(t.__name__ for t in allowed)}, got {type(value).__name__} {value!r:.60}"
    )


def section(cls: type[T], table: Mapping[str, Any], name: str, source: str, env: Mapping[str, str] | None = None) -> T:
    """Build dataclass ``cls`` from ``[name]`` of ``source``, then apply ``TINYFED_<NAME>_<KEY>`` overrides."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{source} [{name}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for key in fields:
        allowed = _allowed_types(hints[key])
        env_name = f"{ENV_PREFIX}_{name}_{key}".upper().replace("-", "_")
        if env_name in env:
            values[key] = _from_env(env[env_name], allowed, env_name)
        elif key in table:
            values[key] = _check(table[key], allowed, f"{source} [{name}] {key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source} [{name}]: {exc}") from exc


def check_tables(data: Mapping[str, Any], known: tuple[str, ...], source: str) -> None:
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown table [{key}]; known: {', '.join(known)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a table ([{key}])")


def table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``[name]`` of a file already checked by :func:`check_tables` (absent: empty)."""
    value = data.get(name, {})
    assert isinstance(value, dict)
    return value


def broker_section(data: Mapping[str, Any], source: str, env: Mapping[str, str] | None = None) -> BrokerConfig:
    """``[broker]``, shared by devices and gateways: protocol defaults to auto, URL and protocol checked."""
    from .transport.broker_config import BrokerConfig

    broker_table = {"protocol": "auto", **table(data, "broker")}
    if isinstance(broker_table["protocol"], int):  # `protocol = 5` written as a number
        broker_table["protocol"] = str(broker_table["protocol"])
    config = section(BrokerConfig, broker_table, "broker", source, env)
    try:
        config.endpoint()
    except Exception as exc:
        raise ConfigError(f"{source} [broker] url: {exc}") from exc
    if config.protocol not in ("5", "3.1.1", "auto"):
        raise ConfigError(f"{source} [broker] protocol: {config.protocol!r} is not 5, 3.1.1 or auto")
    return config
