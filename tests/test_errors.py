"""Errors a user meets, met as the user meets them: ``python -m tinyfed ...`` in a subprocess, real files.

Each situation is one command on a bad input; the test asserts the exit
code, that the one error line names what is at fault (the option, key or
variable, and the path), and that no traceback reaches the user. The
unwritable cases run the command without root's permission override
(CAP_DAC_OVERRIDE) when the suite runs as root, since root writes anywhere.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edge_runtime.config import PROCESS_VARIABLES, ROLE_TABLES, ConfigError
from edge_runtime.device_config import DeviceConfig
from edge_runtime.model.backends import BACKEND_NAMES, available_backends
from edge_runtime.model.reader import read_graph
from edge_runtime.model.writer import write_graph
from edge_runtime.transport.broker import MosquittoProcess, free_port
from gateway.config import GatewayConfig
from tests.helpers import INSECURE_TOML
from tests.test_cli import installed_except
from tinyfed import cli
from tinyfed.extras import IMPORT_NAMES, InstalledExtras

WAIT = 120.0  # an upper bound for a command that imports numpy and an interpreter; never a timing assertion
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_root_override() -> None:
    """In the child, before exec: take root's permission override out of the bounding set, so the exec'd
    process has it in no capability set and file modes apply to it as to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def tinyfed(
    *args: str, cwd: Path, env: dict[str, str] | None = None, unprivileged: bool = False
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TINYFED_")} | (env or {})
    preexec = _drop_root_override if unprivileged and os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-m", "tinyfed", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=cwd,
        env=environment,
        preexec_fn=preexec,
    )


@pytest.fixture
def place(tmp_path: Path, initial_model: Path) -> Path:
    """A working folder with what the situations point at: good, float and non-models, a file, a read-only folder."""
    (tmp_path / "model.tflite").write_bytes(initial_model.read_bytes())
    graph = read_graph(initial_model.read_bytes())
    graph.tensors[graph.inputs[0]].dtype = np.dtype(np.float32)
    graph.tensors[graph.inputs[0]].quant = None
    (tmp_path / "float.tflite").write_bytes(write_graph(graph))
    (tmp_path / "notes.tflite").write_text("not a model\n")
    (tmp_path / "afile").write_text("a file where a folder belongs\n")
    (tmp_path / "folder").mkdir()
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    return tmp_path


def device_toml(place: Path, device: str = 'storage = "state"', data: str = 'source = "digits"') -> str:
    path = place / "device.toml"
    path.write_text(
        f'[device]\nid = "pi-1"\nconnect_timeout = 2.0\n{device}\n[data]\n{data}\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n' + INSECURE_TOML
    )
    return str(path)


def gateway_toml(place: Path, gateway: str = 'model = "model.tflite"', strategy: str = "", storage: str = "hub") -> str:
    path = place / "gateway.toml"
    path.write_text(
        f'[gateway]\nstorage = "{storage}"\n{gateway}\n[strategy]\n{strategy}\n[broker]\nurl = "mqtt://127.0.0.1:1"\n'
        + INSECURE_TOML
    )
    return str(path)


@dataclass
class Situation:
    """One bad input: the command (given the prepared folder), what the error line must contain, the exit code."""

    args: Callable[[Path], list[str]]
    says: list[str]
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    unprivileged: bool = False


def model_build(out: str) -> Callable[[Path], list[str]]:
    return lambda p: ["model", "build", "--arch", "mlp", "--data", "digits", "--out", out]


SITUATIONS = {
    # model files
    "inspect a missing model": Situation(lambda p: ["model", "inspect", "nope.tflite"], ["nope.tflite: no such file"]),
    "inspect a text file": Situation(
        lambda p: ["model", "inspect", "notes.tflite"], ["notes.tflite: not a .tflite model"]
    ),
    "inspect a folder": Situation(lambda p: ["model", "inspect", "folder"], ["folder: is a folder, not a file"]),
    "train a missing model": Situation(
        lambda p: ["device", "train", "--model", "nope.tflite", "--data", "digits"],
        ["--model nope.tflite: no such file"],
    ),
    "train a float model": Situation(
        lambda p: ["device", "train", "--model", "float.tflite", "--data", "digits"],
        ["--model float.tflite: not an int8 model", "tensor 'input': dtype is float32", "tinyfed model build"],
    ),
    "gateway with a missing initial model": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, 'model = "nope.tflite"')],
        ["gateway.toml [gateway] model nope.tflite: no such file"],
    ),
    "gateway with a text file as its model": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, 'model = "notes.tflite"')],
        ["gateway.toml [gateway] model notes.tflite: not a .tflite model"],
    ),
    "gateway with a float model": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, 'model = "float.tflite"')],
        ["gateway.toml [gateway] model float.tflite: not an int8 model"],
    ),
    "gateway with no model and no state": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, "")],
        ["gateway.toml [gateway] model: no initial model given, and hub holds no gateway state"],
    ),
    # output paths
    "--out into a missing folder": Situation(
        model_build("missing/m.tflite"), ["--out missing/m.tflite: folder missing does not exist"]
    ),
    "--out onto a folder": Situation(model_build("folder"), ["--out folder: is a folder; name a file inside it"]),
    "--out under a file": Situation(model_build("afile/m.tflite"), ["--out afile/m.tflite: afile is a file"]),
    "--out into a read-only folder": Situation(
        model_build("readonly/m.tflite"),
        ["--out readonly/m.tflite: folder readonly is not writable"],
        unprivileged=True,
    ),
    "train --out into a missing folder (before training)": Situation(
        lambda p: ["device", "train", "--model", "model.tflite", "--data", "digits", "--out", "missing/t.tflite"],
        ["--out missing/t.tflite: folder missing does not exist"],
    ),
    "hil --flash-file onto a folder": Situation(
        lambda p: ["hil", "emulate", "--data", "none", "--flash-file", "folder"], ["--flash-file folder: is a folder"]
    ),
    # storage folders
    "device storage is a file": Situation(
        lambda p: ["device", "run", "--config", device_toml(p, 'storage = "afile"')],
        ["device.toml [device] storage afile: is a file, not a folder"],
    ),
    "device storage under a file": Situation(
        lambda p: ["device", "run", "--config", device_toml(p, 'storage = "afile/state"')],
        ["device.toml [device] storage afile/state: afile is a file, not a folder"],
    ),
    "device storage read-only": Situation(
        lambda p: ["device", "run", "--config", device_toml(p, 'storage = "readonly"')],
        ["device.toml [device] storage readonly: the folder is not writable"],
        unprivileged=True,
    ),
    "device storage cannot be created": Situation(
        lambda p: ["device", "run", "--config", device_toml(p, 'storage = "readonly/state"')],
        ["device.toml [device] storage readonly/state: cannot create the folder: permission denied"],
        unprivileged=True,
    ),
    "device storage set by a variable": Situation(
        lambda p: ["device", "run", "--config", device_toml(p)],
        ["TINYFED_DEVICE_STORAGE afile: is a file, not a folder"],
        env={"TINYFED_DEVICE_STORAGE": "afile"},
    ),
    "gateway storage is a file": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, storage="afile")],
        ["gateway.toml [gateway] storage afile: is a file, not a folder"],
    ),
    "gateway storage read-only": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, storage="readonly")],
        ["gateway.toml [gateway] storage readonly: the folder is not writable"],
        unprivileged=True,
    ),
    "rollback with no state": Situation(
        lambda p: ["gateway", "rollback", "--config", gateway_toml(p), "--to", "00"],
        ["gateway.toml [gateway] storage hub: no gateway state here"],
    ),
    "bridge storage is a file": Situation(
        lambda p: ["bridge", "run", "--port", "socket://127.0.0.1:9", "--storage", "afile"],
        ["--storage afile: is a file, not a folder"],
    ),
    # strategy options
    "a misspelt strategy option": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, strategy='name = "fedavgm"\nmomentun = 0.5')],
        ["gateway.toml [strategy]: fedavgm has no option momentun (did you mean momentum?)"],
    ),
    "a strategy option of the wrong type": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, strategy='name = "fedavgm"\nmomentum = "high"')],
        ["gateway.toml [strategy] momentum: expected float, got str 'high'"],
    ),
    "a misspelt strategy": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, strategy='name = "fedavgn"')],
        ["gateway.toml [strategy] name: unknown strategy 'fedavgn' (did you mean fedavg"],
    ),
    "a strategy option from the environment": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p, strategy='name = "krum"')],
        ["TINYFED_STRATEGY_BYZANTINE='some': expected int"],
        env={"TINYFED_STRATEGY_BYZANTINE": "some"},
    ),
    # environment overrides
    "a misspelt broker variable on a device": Situation(
        lambda p: ["device", "run", "--config", device_toml(p)],
        ["environment variable TINYFED_BROKER_ULR: not a device setting; did you mean TINYFED_BROKER_URL?"],
        env={"TINYFED_BROKER_ULR": "mqtt://hub:1883"},
    ),
    "a misspelt table in a variable on the gateway": Situation(
        lambda p: ["gateway", "run", "--config", gateway_toml(p)],
        ["environment variable TINYFED_ROUND_DEADLINE: not a gateway setting; did you mean TINYFED_ROUNDS_DEADLINE?"],
        env={"TINYFED_ROUND_DEADLINE": "30"},
    ),
    "a misspelt broker variable on the bridge": Situation(
        lambda p: ["bridge", "run", "--port", "socket://127.0.0.1:9"],
        ["environment variable TINYFED_BROKER_PASWORD: not a bridge setting; did you mean TINYFED_BROKER_PASSWORD?"],
        env={"TINYFED_BROKER_PASWORD": "secret"},
    ),
    "a misspelt key in TOML": Situation(
        lambda p: ["device", "run", "--config", device_toml(p, data="holdot = 0.1")],
        ["device.toml [data]: unknown key(s) holdot (did you mean holdout?)"],
    ),
    # the bridge's ports
    "a serial port that does not exist": Situation(
        lambda p: ["bridge", "run", "--port", "/dev/ttyNOPE0"], ["--port /dev/ttyNOPE0: no such serial port"]
    ),
    "a file that is not a serial port": Situation(
        lambda p: ["bridge", "run", "--port", "afile"], ["--port afile: not a serial device"]
    ),
    "a URL pyserial does not know": Situation(
        lambda p: ["bridge", "run", "--port", "serail://x"], ["--port serail://x: not a serial port URL pyserial knows"]
    ),
}


@pytest.mark.parametrize("name", list(SITUATIONS))
def test_each_error_names_what_is_wrong(name: str, place: Path) -> None:
    situation = SITUATIONS[name]
    args = situation.args(place)
    command = next(c for c in cli.discover() if c.name == args[0])
    missing = InstalledExtras.from_metadata().missing(command.extras)
    if missing:
        pytest.skip(f"tinyfed {command.name} is not installed here ({', '.join(missing)})")
    run = tinyfed(*args, cwd=place, env=situation.env, unprivileged=situation.unprivileged)
    assert run.returncode == situation.code, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("tinyfed: error: ")]
    assert len(errors) == 1, run.stderr
    for text in situation.says:
        assert text in errors[0], errors[0]


def test_training_does_not_start_when_its_output_cannot_be_written(place: Path) -> None:
    run = tinyfed("device", "train", "--model", "model.tflite", "--data", "digits", "--out", "missing/t.tflite",
                  cwd=place)  # fmt: skip
    assert run.returncode == 2 and "epoch" not in run.stderr and run.stdout == "", run.stdout + run.stderr


@pytest.mark.parametrize("lacking", ["backend", "data"])
def test_a_device_names_the_interpreter_or_data_it_lacks(lacking: str, place: Path) -> None:
    missing = [name for name in BACKEND_NAMES if name not in available_backends()]
    if lacking == "backend":
        if not missing:
            pytest.skip("every interpreter backend is installed here")
        run = tinyfed("device", "run", "--config", device_toml(place, f'backend = "{missing[0]}"'), cwd=place)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert f"device.toml [device] backend = '{missing[0]}': " in run.stderr and "is not installed" in run.stderr
        assert f"pip install 'tinyfed[{missing[0]}]'" in run.stderr
    else:
        run = tinyfed("device", "run", "--config", device_toml(place, data='source = "gone.csv"'), cwd=place)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert "device.toml [data] source = 'gone.csv': gone.csv" in run.stderr


# -- the bridge against a real broker ---------------------------------------------------------------------------


def test_the_bridge_exits_3_when_the_broker_cannot_be_reached(place: Path) -> None:
    port = free_port()  # nothing listens here
    run = tinyfed("bridge", "run", "--port", "socket://127.0.0.1:9", "--broker", f"mqtt://127.0.0.1:{port}",
                  "--connect-timeout", "2", "--insecure", cwd=place)  # fmt: skip
    assert run.returncode == 3, run.stderr
    assert f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port}" in run.stderr and "--keep-trying" in run.stderr


def test_the_bridge_starts_when_the_broker_answers_and_stops_on_sigterm(broker: MosquittoProcess, place: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyfed", "bridge", "run", "--port", "socket://127.0.0.1:9", "--broker", broker.url,
         "--insecure"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=place,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed only after the broker answered the probe
        assert line.startswith(f"bridging 1 port(s) to {broker.url}, federation default"), line
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and "bridge stopped" in out, err


def test_device_gateway_and_bridge_share_the_federation_default() -> None:
    bridge = next(c for c in cli.discover() if c.name == "bridge")
    parser = argparse.ArgumentParser()
    bridge.configure(parser)
    run = parser.parse_args(["run", "--port", "/dev/ttyACM0"])
    assert DeviceConfig.from_mapping({}, env={}).device.federation == run.federation
    assert GatewayConfig.from_mapping({}, env={}).gateway.federation == run.federation
    docs = (Path(__file__).parents[1] / "docs" / "transport.md").read_text()
    assert f'default "{run.federation}"' in docs  # the page a device owner reads says it


# -- the environment -------------------------------------------------------------------------------------------


def test_every_roles_tables_are_known_to_the_environment_check() -> None:
    assert tuple(DeviceConfig.tables()) == ROLE_TABLES["device"]
    assert tuple(GatewayConfig.tables()) == ROLE_TABLES["gateway"]


def test_a_variable_of_another_role_or_of_the_process_is_left_alone() -> None:
    shared = {"TINYFED_BROKER_URL": "mqtt://hub:1883", "TINYFED_DATA_DIR": "/srv/data"} | {
        name: "x" for name in PROCESS_VARIABLES
    }
    device = DeviceConfig.from_mapping({}, env=shared | {"TINYFED_ROUNDS_DEADLINE": "30"})
    gateway = GatewayConfig.from_mapping({}, env=shared | {"TINYFED_DEVICE_ID": "pi-1", "TINYFED_DATA_GROUP": "3"})
    assert device.broker.url == gateway.broker.url == "mqtt://hub:1883"
    with pytest.raises(ConfigError, match="TINYFED_DEVICE_IDD: not a device setting; did you mean TINYFED_DEVICE_ID"):
        DeviceConfig.from_mapping({}, env={"TINYFED_DEVICE_IDD": "pi-1"})


def test_strategy_options_come_from_the_environment_too() -> None:
    config = GatewayConfig.from_mapping(
        {"strategy": {"name": "fedavgm"}}, env={"TINYFED_STRATEGY_MOMENTUM": "0.5", "TINYFED_STRATEGY_SERVER_LR": "2"}
    )
    strategy = config.make_strategy()
    assert (strategy.name, strategy.momentum, strategy.server_lr) == ("fedavgm", 0.5, 2.0)
    switched = GatewayConfig.from_mapping({"strategy": {"name": "fedavgm"}}, env={"TINYFED_STRATEGY_NAME": "krum"})
    assert switched.make_strategy().name == "krum"


# -- help and missing packages --------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, f"{path} {name}")
    return found


def test_every_option_of_every_command_is_described_and_shows_its_default() -> None:
    top = cli.parser(cli.discover())
    parsers = _parsers(top, "tinyfed")
    assert {"tinyfed device run", "tinyfed gateway run", "tinyfed bridge run", "tinyfed bench"} <= {
        p for p, _ in parsers
    }
    for path, parser in parsers:
        text = "".join(parser.format_help().split())  # line wrapping may split a default anywhere
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{path}: {action.option_strings or action.dest} has no help"
            shown = action.default not in (None, False, argparse.SUPPRESS) and not action.required
            if shown and action.option_strings:
                assert f"(default:{action.default})".replace(" ", "") in text, (path, action.dest)


def test_help_and_version_as_a_user_sees_them(tmp_path: Path) -> None:
    version = tinyfed("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"tinyfed {importlib.metadata.version('tinyfed')}"
    shown = tinyfed("bridge", "run", "--help", cwd=tmp_path)
    flat = " ".join(shown.stdout.split())
    assert shown.returncode == 0 and "(default: 115200)" in flat and "(default: default)" in flat, shown.stdout


def test_demo_help_states_the_demos_own_defaults() -> None:
    from tinyfed.demo import DEFAULTS

    demo = next(p for path, p in _parsers(cli.parser(cli.discover()), "tinyfed") if path == "tinyfed demo")
    text = " ".join(demo.format_help().split())
    assert f"(default: {DEFAULTS['digits']['rounds']} for digits, {DEFAULTS['har']['rounds']} otherwise)" in text
    assert f"(default: {DEFAULTS['digits']['epochs']} for digits, else {DEFAULTS['har']['epochs']})" in text
    assert f"(default: {DEFAULTS['digits']['density']} for digits, else {DEFAULTS['har']['density']})" in text


def test_a_package_that_does_not_import_inside_a_command_names_its_extra(tmp_path: Path) -> None:
    """pyserial's metadata is there but the module does not import (a half-removed install): one line, the extra."""
    code = (
        "import sys; sys.modules['serial'] = None; from tinyfed.cli import main;"
        "sys.exit(main(['bridge', 'run', '--port', 'socket://127.0.0.1:9']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip() == (
        "tinyfed: error: tinyfed bridge needs the Python package 'serial' (the 'bridge' extra), which does not "
        "import here: pip install 'tinyfed[bridge]'"
    )


def test_a_missing_module_of_tinyfed_itself_keeps_its_traceback(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['firmware_bridge.bridge'] = None; from tinyfed.cli import main;"
        "sys.exit(main(['bridge', 'run', '--port', 'socket://127.0.0.1:9']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" in run.stderr and "firmware_bridge.bridge" in run.stderr


def test_benchmarks_name_the_extras_they_need_before_running_any(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "serial_link", "codec"], extras=installed_except("tflite-micro")) == 2
    assert capsys.readouterr().err.strip() == (
        "tinyfed: error: tinyfed bench: serial_link needs tflite-micro: pip install 'tinyfed[hil]', "
        "or run only the others: tinyfed bench codec"
    )
    assert cli.main(["bench", "round_scale"], extras=installed_except("psutil")) == 2
    assert "round_scale needs psutil>=5.9: pip install 'tinyfed[bench]'" in capsys.readouterr().err


def test_the_import_names_of_optional_packages_are_right() -> None:
    """Each optional requirement installed here imports under the name tinyfed.extras expects for it."""
    metadata = importlib.metadata.metadata("tinyfed")
    distributions = importlib.metadata.packages_distributions()
    provides: dict[str, set[str]] = {}
    for module, dists in distributions.items():
        for dist in dists:
            provides.setdefault(canonicalize_name(dist), set()).add(module)
    expected = {canonicalize_name(dist): module for module, dist in IMPORT_NAMES.items()}
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    core = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    checked = 0
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if requirement.marker is None or name in core or name == "tinyfed" or name not in provides:
            continue  # a core requirement (numpy<2 in an extra) is every install's, not an extra's
        if not any(requirement.marker.evaluate({"extra": e}) for e in ("device", "gateway", "bridge", "hil", "demo",
                                                                       "bench", "sign", "data", "micro", "litert",
                                                                       "privacy", "metrics",
                                                                       "tflite-runtime")):  # fmt: skip
            continue  # dev's tools
        module = expected.get(name, name.replace("-", "_"))
        assert module in provides[name], f"{name} imports as {sorted(provides[name])}, not {module}"
        assert InstalledExtras.from_metadata().providing(module), module
        checked += 1
    assert checked >= 8  # paho, scikit-learn, pyserial, cobs, psutil, matplotlib, amqtt, cryptography, ...
