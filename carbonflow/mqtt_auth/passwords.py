"""New MQTT passwords, hashed by Mosquitto's own ``mosquitto_passwd`` (never by hand).

The password goes to ``mosquitto_passwd`` on its stdin (not on its command line, where other
users could read it) and into a password file in a private temporary directory; only the
hash is kept.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydantic import SecretStr

from carbonflow.errors import CredentialError
from carbonflow.mqtt_auth.access import PASSWORD_HASH_RE

PASSWD_TOOL = "mosquitto_passwd"  # noqa: S105 - a program name
PASSWORD_BYTES = 24


def new_password() -> SecretStr:
    """32 URL-safe characters: safe in env files and shells without quoting."""
    return SecretStr(secrets.token_urlsafe(PASSWORD_BYTES))


def hash_password(username: str, password: SecretStr) -> str:
    """The password-file hash of ``password`` (sha512-pbkdf2, ``$7$...``)."""
    if not username or ":" in username or any(c.isspace() for c in username):
        raise CredentialError(f"invalid MQTT username {username!r}")
    secret = password.get_secret_value()
    if not secret or "\n" in secret or "\r" in secret:
        raise CredentialError("an MQTT password must be one non-empty line")
    binary = shutil.which(PASSWD_TOOL) or shutil.which(PASSWD_TOOL, path="/usr/bin")
    if binary is None:
        raise CredentialError(
            f"{PASSWD_TOOL} not found: install Debian's mosquitto package"
            " (`carbonflow stack up` does)"
        )
    with tempfile.TemporaryDirectory(prefix="carbonflow-passwd-") as folder:
        path = Path(folder) / "passwd"
        try:
            done = subprocess.run(
                [binary, "-c", str(path), username],
                input=f"{secret}\n{secret}\n",
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            line = path.read_text().strip() if done.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError) as exc:
            raise CredentialError(f"{PASSWD_TOOL} failed: {exc}") from exc
    if done.returncode != 0:
        raise CredentialError(f"{PASSWD_TOOL} failed: {done.stderr.strip()}")
    name, _, hashed = line.partition(":")
    if name != username or PASSWORD_HASH_RE.fullmatch(hashed) is None:
        raise CredentialError(f"{PASSWD_TOOL} wrote an unexpected line for {username}")
    return hashed
