"""The gateway config file: the example loads, and every problem names its field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.config import (
    BrokerSettings,
    ConfigFileError,
    GatewayConfig,
    ModbusTcpDevice,
    OpcUaDevice,
    SecretUnavailableError,
    SimulatedDevice,
    load_config,
)
from edge.errors import EdgeError

EXAMPLE = Path(__file__).resolve().parents[2] / "edge" / "examples" / "gateway.toml"

HEADER = """\
gateway_id = "gw-1"

[broker]
host = "127.0.0.1"
port = 1883

[buffer]
path = "buffer"
"""

MODBUS = """\
[[devices]]
device_id = "{device_id}"
protocol = "modbus_tcp"
host = "10.0.0.5"
register_map = "eastron_sdm630"
metrics = {metrics}
poll_interval_s = {poll}
timeout_s = {timeout}
"""


def modbus(
    device_id: str = "meter-1",
    metrics: str = '["active_power"]',
    poll: float = 1.0,
    timeout: float = 0.5,
) -> str:
    return MODBUS.format(device_id=device_id, metrics=metrics, poll=poll, timeout=timeout)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigFileError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def test_example_loads() -> None:
    config = load_config(EXAMPLE)

    assert config.gateway_id == "plant1-hall-a-gw01"
    assert config.topic_root == "cf/v1"
    kinds = [type(device) for device in config.devices]
    assert sorted(kind.__name__ for kind in kinds) == sorted(
        [ModbusTcpDevice.__name__, OpcUaDevice.__name__, SimulatedDevice.__name__]
    )
    modbus_device = config.device("hall-a-incomer")
    assert isinstance(modbus_device, ModbusTcpDevice)
    assert modbus_device.port == 502
    assert modbus_device.timeout_s < modbus_device.poll_interval_s


def test_minimal_file_gets_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, HEADER + modbus()))

    assert config.buffer.path == tmp_path / "buffer"
    assert config.buffer.overflow_policy == "drop_oldest"
    assert config.publish.max_batch_readings == 1000
    device = config.devices[0]
    assert isinstance(device, ModbusTcpDevice)
    assert (device.port, device.unit_id) == (502, 1)


def test_config_file_error_is_an_edge_error(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match=r"gateway\.toml"):
        load_config(tmp_path / "gateway.toml")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigFileError) as info:
        load_config(path)

    assert info.value.problems == ("file not found",)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, 'gateway_id = "gw-1"\n[broker]\nhost = 127.0.0.1\n')

    assert len(problems) == 1
    assert problems[0].startswith("line 3, column ")
    assert "TOML syntax error" in problems[0]


def test_bad_device_id(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, HEADER + modbus(device_id="meter 1"))

    assert len(problems) == 1
    assert problems[0].startswith("devices[0].device_id: must start with a letter or digit")
    assert "'meter 1'" in problems[0]


def test_unknown_metric(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, HEADER + modbus(metrics='["active_power", "power"]'))

    assert len(problems) == 1
    assert problems[0].startswith("devices[0].metrics[1]: unknown metric 'power'")


def test_duplicate_device_id_is_reported_by_index(tmp_path: Path) -> None:
    text = HEADER + modbus("meter-1") + modbus("meter-2") + modbus("meter-1")
    problems = problems_of(tmp_path, text)

    assert problems == (
        "devices[2].device_id: duplicate device id 'meter-1', already used by devices[0]",
    )


def test_timeout_must_be_less_than_poll_interval(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, HEADER + modbus() + modbus("meter-2", poll=2.0, timeout=2.0))

    assert len(problems) == 1
    assert problems[0].startswith("devices[1].timeout_s: must be less than poll_interval_s (2.0)")


def test_non_positive_poll_interval(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, HEADER + modbus(poll=0, timeout=0.5))

    assert problems == ("devices[0].poll_interval_s: must be greater than 0",)


def test_devices_must_not_be_empty(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "devices = []\n" + HEADER) == (
        "devices: must list at least one entry",
    )
    assert problems_of(tmp_path, HEADER) == ("devices: required",)


def test_metric_listed_twice(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, HEADER + modbus(metrics='["voltage", "voltage"]'))

    assert problems == ("devices[0].metrics[1]: 'voltage' is listed twice",)


def test_default_timeout_is_named_when_it_does_not_fit(tmp_path: Path) -> None:
    text = HEADER + modbus(poll=0.5).replace("timeout_s = 0.5\n", "")
    problems = problems_of(tmp_path, text)

    assert len(problems) == 1
    assert problems[0].startswith("devices[0].timeout_s: must be less than poll_interval_s (0.5)")
    assert "(the default)" in problems[0]


def test_backoff_max_must_cover_poll_interval(tmp_path: Path) -> None:
    text = HEADER + modbus(poll=30, timeout=5) + "[devices.backoff]\nmax_s = 10\n"
    problems = problems_of(tmp_path, text)

    assert problems == ("devices[0].backoff.max_s: must be at least poll_interval_s (30.0)",)


def test_unknown_protocol(tmp_path: Path) -> None:
    text = HEADER + modbus().replace('"modbus_tcp"', '"bacnet"')
    problems = problems_of(tmp_path, text)

    assert problems == (
        "devices[0].protocol: must be one of 'simulated', 'modbus_tcp', 'opcua' (got 'bacnet')",
    )


def test_missing_protocol(tmp_path: Path) -> None:
    text = HEADER + modbus().replace('protocol = "modbus_tcp"\n', "")
    problems = problems_of(tmp_path, text)

    assert problems == ("devices[0].protocol: required; one of 'simulated', 'modbus_tcp', 'opcua'",)


def test_missing_protocol_specific_field(tmp_path: Path) -> None:
    text = HEADER + modbus().replace('register_map = "eastron_sdm630"\n', "")
    problems = problems_of(tmp_path, text)

    assert problems == ("devices[0].register_map: required",)


def test_field_of_another_protocol_is_unknown(tmp_path: Path) -> None:
    text = HEADER + modbus() + 'endpoint = "opc.tcp://10.0.0.5:4840"\n'
    problems = problems_of(tmp_path, text)

    assert problems == ("devices[0].endpoint: unknown field",)


def test_opcua_needs_a_node_per_metric(tmp_path: Path) -> None:
    text = HEADER + textwrap.dedent(
        """\
        [[devices]]
        device_id = "plc-1"
        protocol = "opcua"
        endpoint = "http://10.0.0.9:4840"
        metrics = ["active_power", "voltage"]
        poll_interval_s = 5

        [devices.nodes]
        active_power = "ns=3;s=P"
        """
    )
    problems = problems_of(tmp_path, text)

    assert problems == ("devices[0].endpoint: must be an opc.tcp://host[:port][/path] URL",)
    problems = problems_of(tmp_path, text.replace("http://", "opc.tcp://"))
    assert problems == ("devices[0].nodes: no node id for metric 'voltage'",)


def test_register_map_path_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "custom.toml").write_text(
        '[meter]\nmanufacturer = "Example"\nmodel = "M1"\nsource = "its manual"\n'
        '[metrics.active_power]\naddress = 0\nregister_type = "input"\n'
        'data_type = "float32"\nunit = "W"\nkind = "instantaneous"\n',
        encoding="utf-8",
    )
    text = HEADER + modbus().replace('"eastron_sdm630"', '"maps/custom.toml"')

    device = load_config(write(tmp_path, text)).devices[0]
    assert isinstance(device, ModbusTcpDevice)
    assert device.register_map == tmp_path / "maps" / "custom.toml"

    problems = problems_of(tmp_path, text.replace("custom.toml", "missing.toml"))
    assert len(problems) == 1
    assert problems[0].startswith("devices[0].register_map: file not found: ")


def test_inline_password_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    text = HEADER.replace("port = 1883\n", 'port = 1883\nusername = "gw"\npassword = "hunter2"\n')
    with pytest.raises(ConfigFileError) as info:
        load_config(write(tmp_path, text + modbus()))

    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(
        "broker.password: a password must not be written in the config file"
    )
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in str(info.value.__cause__)


def test_tls_files_must_exist(tmp_path: Path) -> None:
    text = HEADER + '[broker.tls]\nca_file = "ca.pem"\n' + modbus()
    problems = problems_of(tmp_path, text)

    assert problems == (f"broker.tls.ca_file: file not found: {tmp_path / 'ca.pem'}",)
    (tmp_path / "ca.pem").write_text("", encoding="utf-8")
    config = load_config(write(tmp_path, text))
    assert config.broker.tls is not None
    assert config.broker.tls.ca_file == tmp_path / "ca.pem"


def test_many_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = (
        HEADER.replace('"gw-1"', '"gw 1"').replace("port = 1883", "port = 0")
        + "[publish]\nmax_batch_readings = 20000\n"
        + modbus("meter-1", metrics='["watts"]')
        + modbus("meter-2", poll=1.0, timeout=3.0)
        + modbus("meter-1")
    )
    with pytest.raises(ConfigFileError) as info:
        load_config(write(tmp_path, text))

    fields = [problem.split(":", 1)[0] for problem in info.value.problems]
    assert fields == [
        "gateway_id",
        "broker.port",
        "publish.max_batch_readings",
        "devices[0].metrics[0]",
        "devices[1].timeout_s",
        "devices[2].device_id",
    ]
    message = str(info.value)
    assert message.startswith(f"invalid gateway config {tmp_path / 'gateway.toml'}:\n")
    assert len(message.splitlines()) == 1 + len(fields)
    assert isinstance(info.value.__cause__, ValidationError)


def test_models_are_frozen() -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(ValidationError):
        config.gateway_id = "other"  # type: ignore[misc]


def broker(**fields: object) -> BrokerSettings:
    return BrokerSettings.model_validate({"host": "127.0.0.1", "username": "gw", **fields})


def test_password_from_the_environment_mapping() -> None:
    settings = broker(password_env="GW_PASSWORD")

    secret = settings.read_password({"GW_PASSWORD": "s3cret"})
    assert secret is not None
    assert secret.get_secret_value() == "s3cret"
    with pytest.raises(SecretUnavailableError, match=r"broker\.password_env: .*GW_PASSWORD"):
        settings.read_password({})


def test_password_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("s3cret\n", encoding="utf-8")
    settings = broker(password_file=str(secret_file))

    secret = settings.read_password({})
    assert secret is not None
    assert secret.get_secret_value() == "s3cret"
    secret_file.write_text("\n", encoding="utf-8")
    with pytest.raises(SecretUnavailableError, match="is empty"):
        settings.read_password({})


def test_no_password_configured() -> None:
    assert BrokerSettings(host="127.0.0.1").read_password({"ANY": "x"}) is None


def test_password_sources_are_exclusive_and_need_a_username(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text("s3cret", encoding="utf-8")
    with pytest.raises(ValidationError) as info:
        BrokerSettings.model_validate(
            {"host": "h", "password_env": "X", "password_file": str(secret_file)}
        )

    assert [error["loc"] for error in info.value.errors()] == [("password_file",), ("username",)]


def test_gateway_config_validates_without_a_file() -> None:
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "gw-1",
            "broker": {"host": "127.0.0.1"},
            "buffer": {"path": "/var/lib/carbonflow/buffer"},
            "devices": [
                {
                    "device_id": "sim-1",
                    "protocol": "simulated",
                    "kind": "chiller",
                    "metrics": ["active_power"],
                    "poll_interval_s": 2,
                }
            ],
        }
    )
    assert isinstance(config.devices[0], SimulatedDevice)
