"""TLS context, credentials file and fatal CONNACK refusals, without a broker (test_mqtt.py has the real ones)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.errors import UsageError
from edge_runtime.run.mqtt_auth import is_fatal_connack, read_credentials, tls_context
from tests.broker import make_tls_files

# Every MQTT 5 CONNACK refusal paho knows, and whether retrying can never fix it.
FATAL = ["Client identifier not valid", "Bad user name or password", "Not authorized", "Banned",
         "Bad authentication method"]  # fmt: skip
RETRYABLE = ["Unspecified error", "Malformed packet", "Protocol error", "Implementation specific error",
             "Unsupported protocol version", "Server unavailable", "Server busy", "Quota exceeded",
             "Connection rate exceeded", "Use another server", "Server moved", "Topic name invalid",
             "Packet too large", "Retain not supported", "QoS not supported"]  # fmt: skip


class Renamed(ReasonCode):
    """A reason code whose display string is not paho's (another paho release, a translation)."""

    def __str__(self) -> str:
        return "refused"

    def getName(self) -> str:  # paho's spelling
        return "refused"


@pytest.mark.parametrize("name", FATAL)
def test_fatal_connack_refusals_are_matched_by_value(name: str) -> None:
    code = ReasonCode(PacketTypes.CONNACK, name)
    assert code.is_failure and is_fatal_connack(code)
    renamed = Renamed(PacketTypes.CONNACK, identifier=code.value)
    assert str(renamed) == "refused" and is_fatal_connack(renamed)  # the value decides, not the text


@pytest.mark.parametrize("name", RETRYABLE)
def test_other_connack_refusals_are_retried(name: str) -> None:
    code = ReasonCode(PacketTypes.CONNACK, name)
    assert code.is_failure and not is_fatal_connack(code)


def test_connack_success_and_raw_mqtt_311_return_codes() -> None:
    assert not is_fatal_connack(ReasonCode(PacketTypes.CONNACK, "Success"))
    # MQTT 3.1.1: 1 protocol version, 2 identifier rejected, 3 server unavailable, 4 bad user name or password,
    # 5 not authorised.
    assert [is_fatal_connack(rc) for rc in range(6)] == [False, False, True, False, True, True]
    assert is_fatal_connack(135) and not is_fatal_connack(136)  # MQTT 5 values as plain numbers too


def test_read_credentials_formats_and_errors(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.write_text("user:pa:ss\n")
    assert read_credentials(one) == ("user", "pa:ss")
    two = tmp_path / "two"
    two.write_text("user\npass word\n")
    assert read_credentials(two) == ("user", "pass word")
    bad = tmp_path / "bad"
    bad.write_text("just-a-token\n")
    with pytest.raises(UsageError, match="not in a known format") as info:
        read_credentials(bad)
    assert "just-a-token" not in str(info.value)
    with pytest.raises(UsageError, match="cannot read"):
        read_credentials(tmp_path / "missing")


def test_tls_context_checks_the_broker_and_names_the_bad_setting(tmp_path: Path) -> None:
    assert tls_context(None, None, None) is None  # plain MQTT
    tls = make_tls_files(tmp_path / "pki")
    context = tls_context(str(tls.ca), None, None)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the private CA only, not the system's
    with_client_cert = tls_context(str(tls.ca), str(tls.cert), str(tls.key))
    assert with_client_cert is not None
    with pytest.raises(UsageError, match="must be set together"):
        tls_context(str(tls.ca), str(tls.cert), None)
    with pytest.raises(UsageError, match="tls_ca_file") as info:
        tls_context(str(tmp_path / "missing-ca.pem"), None, None)
    assert info.value.hint == "fix mqtt.tls_ca_file in the profile"
    with pytest.raises(UsageError, match="tls_key_file"):
        tls_context(None, str(tls.cert), str(tmp_path / "missing.key"))
    with pytest.raises(UsageError, match="cannot use the MQTT TLS files"):
        tls_context(str(tls.key), None, None)  # a key is not a CA certificate
