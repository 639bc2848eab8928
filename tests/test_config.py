"""device.toml: defaults, environment overrides, and errors that name the table and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.config import ConfigError
from edge_runtime.device_config import DeviceConfig


def test_file_values_and_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text(
        '[device]\nid = "pi-7"\nfederation = "home"\n[data]\nsource = "har"\ngroup = 7\n'
        '[broker]\nurl = "mqtts://hub:8883"\nusername = "pi-7"\nprotocol = 5\n'
    )
    env = {"TINYFED_BROKER_PASSWORD": "s3cret", "TINYFED_DATA_GROUP": "9", "TINYFED_TRANSPORT_MAX_PAYLOAD": "4096"}
    config = DeviceConfig.load(path, env=env)
    assert (config.device.id, config.device.federation) == ("pi-7", "home")
    assert config.broker.endpoint() == ("hub", 8883, True)
    assert (config.broker.username, config.broker.password, config.broker.protocol) == ("pi-7", "s3cret", "5")
    assert config.data.group == 9 and config.transport.max_payload == 4096
    assert DeviceConfig.from_mapping({}, env={}).broker.protocol == "auto"


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"devices": {}}, {}, r"unknown table \[devices\]"),
        ({"device": {"idd": "x"}}, {}, r"\[device\]: unknown key\(s\) idd"),
        ({"device": {"trainable_layers": "two"}}, {}, r"\[device\] trainable_layers: expected int, got str"),
        ({"device": {"id": "a/b"}}, {}, r"\[device\].*'a/b'"),
        ({"data": {"group": 1, "shard": "0/2"}}, {}, r"\[data\]: set group or shard, not both"),
        ({"broker": {"url": "http://hub"}}, {}, r"\[broker\] url: .*mqtt://"),
        ({}, {"TINYFED_DEVICE_SEED": "many"}, r"TINYFED_DEVICE_SEED='many': expected int"),
        ({"transport": {"max_payload": 10}}, {}, r"\[transport\]: max_payload 10"),
        ({"transport": {"update_format": "tiny"}}, {}, r"\[transport\]: update_format 'tiny' is not one of cbor"),
    ],
)
def test_wrong_values_are_named(data: dict[str, object], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DeviceConfig.from_mapping(data, "device.toml", env=env)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        DeviceConfig.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        DeviceConfig.load(bad)
