"""TOML configuration with environment overrides, checked field by field.

A file is a set of tables (``[device]``, ``[broker]``, ...), each read into
a dataclass. Any key can be overridden by ``TINYFED_<TABLE>_<KEY>`` (for
example ``TINYFED_BROKER_URL``, ``TINYFED_BROKER_PASSWORD``), so secrets
and per-board ids need not live in the file. Unknown tables or keys and
values of the wrong type are errors that name the file, the table and the
key: a typo must not silently fall back to a default. The same holds for the
environment: a ``TINYFED_*`` variable that no table of the configuration
being read has a key for is an error naming it and the closest valid name
(:func:`check_environment`), not an override that silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import TinyfedError

if TYPE_CHECKING:
    from .transport.broker_config import BrokerConfig

ENV_PREFIX = "TINYFED"
# Variables tinyfed reads that are not a key of any configuration table.
PROCESS_VARIABLES = {
    "TINYFED_DATA_DIR": "the folder holding the bundled data sets (har, cmapss)",
    "TINYFED_BENCH_RESULTS": "where `tinyfed bench` writes its results",
    "TINYFED_PURE_PYTHON": "1: decode without the intake's C path (edge_runtime/wire/accel.py)",
    "TINYFED_BUILD_C_EXTENSION": "at install: 1 build the intake's C path or fail, 0 build none (setup.py)",
    "TINYFED_REQUIRE_C_EXTENSION": "1: the tests fail rather than skip where the C path is not built (CI)",
}
# Every role's tables, so that a variable meant for another role (TINYFED_ROUNDS_DEADLINE where a device and
# a gateway share an environment) is left to that role rather than refused; tests/test_errors.py keeps it in step.
ROLE_TABLES = {
    "device": ("device", "data", "broker", "transport", "trust"),
    "gateway": ("gateway", "rounds", "strategy", "privacy", "secagg", "broker", "trust", "metrics", "dashboard",
                "retention", "robustness"),
    "bridge": ("broker",),
}
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


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` most likely is a typo of, if any is close enough to suggest."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(unknown: list[str], known: Iterable[str]) -> str:
    """`` (did you mean url?)`` for one misspelt key, `` (did you mean: ulr -> url, prot -> protocol?)`` for more."""
    known = list(known)
    guesses = {u: g for u in unknown if (g := closest(u, known)) is not None}
    if not guesses:
        return ""
    if len(unknown) == 1:
        return f" (did you mean {guesses[unknown[0]]}?)"
    return f" (did you mean: {', '.join(f'{u} -> {g}' for u, g in guesses.items())}?)"


def env_name(table: str, key: str) -> str:
    """The variable that overrides ``[table] key``: ``TINYFED_BROKER_URL``."""
    return f"{ENV_PREFIX}_{table}_{key}".upper().replace("-", "_")


def setting(source: str, table: str, key: str, env: Mapping[str, str] | None = None) -> str:
    """Where a value came from, as an error names it: ``TINYFED_DEVICE_STORAGE`` or ``dev.toml [device] storage``."""
    variable = env_name(table, key)
    return variable if variable in (os.environ if env is None else env) else f"{source} [{table}] {key}"


def keys_of(cls: type) -> list[str]:
    """The keys of a table read into dataclass ``cls``."""
    return [f.name for f in dataclasses.fields(cls)]


def section(cls: type[T], table: Mapping[str, Any], name: str, source: str, env: Mapping[str, str] | None = None) -> T:
    """Build dataclass ``cls`` from ``[name]`` of ``source``, then apply ``TINYFED_<NAME>_<KEY>`` overrides."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source} [{name}]: unknown key(s) {', '.join(unknown)}{did_you_mean(unknown, fields)}; "
            f"known: {', '.join(fields)}"
        )
    values: dict[str, Any] = {}
    for key in fields:
        allowed = _allowed_types(hints[key])
        variable = env_name(name, key)
        if variable in env:
            values[key] = _from_env(env[variable], allowed, variable)
        elif key in table:
            values[key] = _check(table[key], allowed, f"{source} [{name}] {key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source} [{name}]: {exc}") from exc


def check_tables(data: Mapping[str, Any], known: tuple[str, ...], source: str) -> None:
    for key, value in data.items():
        if key not in known:
            guess = closest(key, known)
            hint = f" (did you mean [{guess}]?)" if guess else ""
            raise ConfigError(f"{source}: unknown table [{key}]{hint}; known: {', '.join(known)}")
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


def check_environment(role: str, tables: Mapping[str, Iterable[str]], env: Mapping[str, str] | None = None) -> None:
    """Every ``TINYFED_*`` variable set here must be a key of one of ``tables``, or a :data:`PROCESS_VARIABLES`.

    ``tables`` maps each table the ``role`` (``device``, ``gateway``, ``bridge``)
    reads to its keys. A misspelt override would otherwise be ignored and the
    file's value (or the default) used without a word; this names the
    variable and the closest valid one. A variable of a table only another
    role has (:data:`ROLE_TABLES`) is that role's business.
    """
    env = os.environ if env is None else env
    valid = {env_name(table, key) for table, keys in tables.items() for key in keys}
    prefix = f"{ENV_PREFIX}_"
    others = {t for role_tables in ROLE_TABLES.values() for t in role_tables} - set(tables)
    for variable in sorted(env):
        if not variable.startswith(prefix) or variable in valid or variable in PROCESS_VARIABLES:
            continue
        if any(variable.startswith(f"{prefix}{t.upper()}_") for t in others):
            continue
        guess = closest(variable, sorted(valid | set(PROCESS_VARIABLES)))
        hint = f"; did you mean {guess}?" if guess else ""
        names = [f"{prefix}{t.upper()}_*" for t in tables]
        listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
        raise ConfigError(f"environment variable {variable}: not a {role} setting{hint} (a {role} reads {listed})")
