"""Who edge-run is to the broker and who the broker is to edge-run: the TLS context, the credentials file, and
which CONNACK refusals mean the broker will never let this client in.

The credentials file holds ``username:password`` (or the two on two lines); its content never reaches a log or an
error message, only its path does. TLS verifies the broker's certificate and host name against ``tls_ca_file``
(else the system's CAs); a client certificate is optional.

Refusals are matched by reason-code value, not by the text paho shows: paho 2 reports every CONNACK as an MQTT 5
``ReasonCode``, mapping an MQTT 3.1.1 return code to its MQTT 5 sibling (4 "bad user name or password" becomes
134), and its display strings are not an interface.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from pathlib import Path
from typing import Final

from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.errors import AuthError, UsageError

__all__ = [
    "FATAL_CONNACK_V5",
    "FATAL_CONNACK_V311",
    "MqttAuthError",
    "is_fatal_connack",
    "read_credentials",
    "tls_context",
]

log = logging.getLogger(__name__)

# CONNACK refusals that retrying cannot fix, as MQTT 5 reason codes (what paho 2 reports for both protocol versions).
FATAL_CONNACK_V5: Final = frozenset(
    {
        0x85,  # 133 Client identifier not valid (3.1.1: 2, identifier rejected)
        0x86,  # 134 Bad user name or password (3.1.1: 4)
        0x87,  # 135 Not authorized (3.1.1: 5)
        0x8A,  # 138 Banned
        0x8C,  # 140 Bad authentication method
    }
)
# The same refusals as MQTT 3.1.1 CONNACK return codes, for a caller holding the raw byte. No MQTT 5 CONNACK code
# lies below 128 except 0 (success), so the two sets cannot be confused.
FATAL_CONNACK_V311: Final = frozenset({2, 4, 5})


class MqttAuthError(AuthError):
    """The broker refused this client's credentials or identity: a startup error, not worth a restart loop."""


def is_fatal_connack(code: ReasonCode | int) -> bool:
    """Whether a CONNACK refusal is one retrying cannot fix (bad credentials, not authorised, banned, bad client id,
    bad authentication method); a paho ``ReasonCode`` or a raw MQTT 3.1.1 return code."""
    if isinstance(code, ReasonCode):
        return code.value in FATAL_CONNACK_V5
    return code in FATAL_CONNACK_V311 or code in FATAL_CONNACK_V5


def read_credentials(path: Path) -> tuple[str, str]:
    """(username, password) from ``username:password`` on one line, or username and password on two lines.

    Raises UsageError naming the file, never its content.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        mode = Path(path).stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read the MQTT credentials file {path}: {getattr(exc, 'strerror', None) or exc}",
            hint="the file holds 'username:password' and must be readable by the service user",
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("MQTT credentials file %s is accessible to other users; chmod 600 it", path)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 1 and ":" in lines[0]:
        username, password = lines[0].split(":", 1)
    elif len(lines) == 2:
        username, password = lines
    else:
        raise UsageError(
            f"MQTT credentials file {path} is not in a known format",
            hint="write 'username:password' on one line, or the username and the password on two lines",
        )
    if not username:
        raise UsageError(f"MQTT credentials file {path} has an empty username", hint="write 'username:password'")
    return username, password


def _check_readable(path: str, what: str) -> str:
    if not os.access(path, os.R_OK) or not Path(path).is_file():
        raise UsageError(
            f"MQTT {what} {path} does not exist or is not readable", hint=f"fix mqtt.{what} in the profile"
        )
    return path


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The client's TLS context for the profile's ``tls_ca_file``, ``tls_cert_file`` and ``tls_key_file``; None
    when none of them is set (plain MQTT). The broker's certificate and host name are always checked.

    Raises UsageError naming the setting when a file is missing, unreadable or not what it should be.
    """
    if bool(cert) != bool(key):
        raise UsageError("tls_cert_file and tls_key_file must be set together", hint="set both or neither")
    if not (ca or cert):
        return None
    ca_file = _check_readable(ca, "tls_ca_file") if ca else None
    cert_file = _check_readable(cert, "tls_cert_file") if cert else None
    key_file = _check_readable(key, "tls_key_file") if key else None
    try:
        # PROTOCOL_TLS_CLIENT: certificate and host name verification on, the highest TLS version both sides know.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
        context.verify_mode = ssl.CERT_REQUIRED
        if ca_file:
            context.load_verify_locations(ca_file)
        else:
            context.load_default_certs()
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise UsageError(
            f"cannot use the MQTT TLS files: {exc}", hint="check tls_ca_file, tls_cert_file and tls_key_file"
        ) from exc
    return context
