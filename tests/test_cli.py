"""The ``tinyfed`` command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from edge_runtime.errors import ExitCode, TinyfedError
from edge_runtime.model.backends import available_backends
from tinyfed.cli import GROUP, discover, main
from tinyfed.extras import InstalledExtras


def tinyfed(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinyfed", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.mark.skipif(not available_backends(), reason="no interpreter backend installed")
def test_build_inspect_and_train_on_digits(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    out = tmp_path / "trained.tflite"
    built = tinyfed("model", "build", "--arch", "mlp", "--data", "digits", "--out", str(model))
    assert built.returncode == 0, built.stderr
    shown = tinyfed("model", "inspect", str(model))
    assert "FULLY_CONNECTED" in shown.stdout and "per-channel" in shown.stdout
    run = tinyfed("device", "train", "--model", str(model), "--data", "digits", "--epochs", "8", "--out", str(out))
    assert run.returncode == 0, run.stderr
    for name in available_backends():
        line = next(ln for ln in run.stdout.splitlines() if ln.startswith(name))
        before, after = (float(v) for v in line.split()[1:3])
        assert after > 0.9 > before
    assert "epoch 8/8" in run.stderr
    assert out.is_file() and out.read_bytes() != model.read_bytes()


def test_corrupt_model_gives_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 10)
    run = tinyfed("model", "inspect", str(bad))
    assert run.returncode == 2
    assert "tinyfed: error:" in run.stderr and "TFLite identifier" in run.stderr
    assert "Traceback" not in run.stderr


def test_output_into_a_closed_pipe_ends_quietly_as_a_piped_tool_does(initial_model: Path) -> None:
    """`tinyfed gateway status | head` closes the pipe early; that is not an error to report."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child writes a byte: its first write fails, every time
    try:
        run = subprocess.run([sys.executable, "-m", "tinyfed", "model", "inspect", str(initial_model)],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    finally:
        os.close(write_end)
    assert run.returncode == 141, run.stderr
    assert run.stderr == ""


def test_unknown_data_source_is_named(tmp_path: Path) -> None:
    run = tinyfed("model", "build", "--arch", "mlp", "--data", "mnist", "--out", str(tmp_path / "m.tflite"))
    assert run.returncode == 2 and "unknown data source 'mnist'" in run.stderr


def test_listing_the_commands_and_device_train_load_no_role_code_and_no_unused_interpreter() -> None:
    code = (
        "import sys; from tinyfed import cli; cli.parser(cli.discover()); from edge_runtime.commands import device;"
        "registrations = {'gateway', 'gateway.commands', 'firmware_bridge', 'firmware_bridge.commands', 'hil',"
        " 'hil.commands', 'gateway.pki', 'gateway.pki.commands'};"
        "bad = [m for m in sys.modules if m.split('.')[0] in"
        " ('gateway', 'firmware_bridge', 'hil', 'paho', 'ai_edge_litert', 'tflite_runtime', 'tflite_micro')"
        " and m not in registrations];"
        "print(bad, len([m for m in sys.modules if m in registrations])); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split()[-1] == "8", run.stdout  # every role's registration was read, and nothing beyond it


def test_the_device_agent_and_the_gateway_load_only_their_own_side() -> None:
    interpreters = "('ai_edge_litert', 'tflite_runtime', 'tflite_micro')"
    agent = (
        "import sys; import edge_runtime.agent, edge_runtime.commands.device_run;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('gateway', 'firmware_bridge', 'hil')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    hub = (
        "import sys; import gateway.service, gateway.cli;"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {interpreters}];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    for code in (agent, hub):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr


def test_version_is_the_installed_distributions() -> None:
    run = tinyfed("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"tinyfed {importlib.metadata.version('tinyfed')}"


# The extras check, in process: the installed distribution's own requirement lines (pyproject's extras, as pip
# recorded them), judged against a made-up set of installed packages.
METADATA = importlib.metadata.metadata("tinyfed")
REQUIREMENTS = METADATA.get_all("Requires-Dist") or []
EXTRAS = METADATA.get_all("Provides-Extra") or []


def installed_except(*absent: str, **versions: str) -> InstalledExtras:
    def version_of(name: str) -> str | None:
        name = canonicalize_name(name)
        if name in absent:
            return None
        return versions.get(name.replace("-", "_"), "99.0")

    return InstalledExtras(REQUIREMENTS, EXTRAS, version_of)


def test_without_paho_the_mqtt_roles_are_not_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"], extras=installed_except("paho-mqtt"))
    assert stopped.value.code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")}
    assert listed == {"model", "hil"}  # hil needs no MQTT; device, gateway, bridge, demo and bench do


def test_a_command_whose_extra_is_missing_names_the_pip_install_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["gateway", "run", "--config", "gateway.toml"], extras=installed_except("paho-mqtt"))
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "tinyfed gateway needs the 'gateway' extra (not installed here: paho-mqtt>=2.0): "
        "pip install 'tinyfed[gateway]'\n"
    )
    assert captured.out == ""


def test_an_extra_that_names_other_extras_is_followed_and_versions_are_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    extras = installed_except("scikit-learn", paho_mqtt="1.6.1")
    assert main(["demo", "--rounds", "1"], extras=extras) == 2  # demo = tinyfed[device,gateway,data] + amqtt
    err = capsys.readouterr().err
    assert err.startswith("tinyfed demo needs the 'demo' extra (not installed here: ")
    assert "paho-mqtt>=2.0 (1.6.1 is installed)" in err and "scikit-learn>=1.3" in err
    assert err.rstrip().endswith("pip install 'tinyfed[demo]'")
    assert main(["bench"], extras=extras) == 2
    assert "tinyfed bench needs the 'device', 'gateway' and 'data' extras" in capsys.readouterr().err


def test_requirements_for_another_machine_or_the_core_are_not_asked_for() -> None:
    extras = InstalledExtras(
        [
            "numpy>=1.23",
            'typing-extensions; python_version < "3.99"',
            'fast-wheel>=2; platform_machine == "no-such-cpu" and extra == "x"',
            'helper; extra == "x"',
        ],
        ["x"],
        version_of=lambda name: None,
    )
    assert extras.missing(["x"]) == ["helper"]
    assert extras.missing([]) == []
    assert extras.missing(["nope"]) == ["tinyfed[nope] (not an extra of this installation)"]


def test_a_registration_that_fails_to_load_is_reported_and_the_others_still_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.metadata.entry_points(group=GROUP)
    broken = importlib.metadata.EntryPoint("broken", "no_such_module:COMMAND", GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken, *real])
    names = [c.name for c in discover()]
    assert names == ["model", "device", "gateway", "bridge", "hil", "demo", "bench", "provision"]
    assert "tinyfed: warning: command broken (no_such_module:COMMAND) did not load" in capsys.readouterr().err


def test_every_error_class_is_a_tinyfed_error_with_its_old_base_and_its_exit_code() -> None:
    """Walks every module of the packages, so a new error class without the root fails here."""
    expected = {
        "TransportError": ExitCode.NO_BROKER,
        "StorageLocked": ExitCode.STORAGE_LOCKED,
        "ClientIdConflict": ExitCode.ID_CONFLICT,
        "SecondGateway": ExitCode.ID_CONFLICT,
    }
    found: dict[str, type[BaseException]] = {}
    for package in ("edge_runtime", "gateway", "firmware_bridge", "hil", "tinyfed"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.endswith("__main__"):
                continue
            try:
                module = importlib.import_module(info.name)
            except ModuleNotFoundError as exc:  # an interpreter wheel this environment does not have
                assert exc.name is not None and exc.name.split(".")[0] not in ("edge_runtime", "gateway", "hil")
                continue
            for name, value in vars(module).items():
                if (
                    isinstance(value, type)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                    and not name.startswith("_")  # the emulated firmware's private control flow
                    and issubclass(value, Exception)  # not control flow like failures.TaskAbandoned (a BaseException)
                ):
                    found[name] = value
    known = ("WireError", "ModelError", "ConfigError", "DataError", "BrokerError", "FrameError", "BoardProblem",
             "LinkError", "FaultSpecError", "BackendUnavailableError", "StorageLocked", "TransportError",
             "ClientIdConflict", "SecondGateway", "TaskFailed",
             "ProvisionError", "RegistryError", "KeyFileError")  # fmt: skip
    assert set(known) <= set(found), set(known) - set(found)
    for name, cls in found.items():
        assert issubclass(cls, TinyfedError), f"{cls.__module__}.{name} is not a TinyfedError"
        assert cls.exit_code == expected.get(name, ExitCode.BAD_INPUT), name
    assert issubclass(found["WireError"], ValueError) and issubclass(found["BrokerError"], OSError)
    assert issubclass(found["ConfigError"], ValueError) and issubclass(found["TransportError"], RuntimeError)
