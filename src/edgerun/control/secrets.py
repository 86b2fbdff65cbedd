"""The local secrets store: values set with ``edgerun secret put``, per project.

Secrets live in one JSON file in the project's state dir, created with mode 0600 and
replaced atomically (write to a temp file, fsync, rename) so a crash never leaves a
half-written file. Values are only ever handed to the deployment's ``env`` (as
``edgerun.http.Secret``, whose repr is masked); ``names()`` never returns them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from edgerun.errors import EdgerunError
from edgerun.http import Secret

__all__ = ["SecretStore", "validate_secret_name"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_SECRET_BYTES = 5 * 1024


class SecretError(EdgerunError):
    """A secret name or value is invalid."""

    code = "secret_invalid"
    status = 400


def validate_secret_name(name: str) -> str:
    """Return ``name`` if it is a valid binding name (a Python identifier, <= 128 chars)."""
    if not _NAME.match(name):
        raise SecretError(
            f"invalid secret name {name[:60]!r}: use letters, digits and '_', "
            "starting with a letter or '_' (at most 128 characters)"
        )
    return name


class SecretStore:
    """Secrets of one project, stored in ``<state_dir>/secrets.json`` (mode 0600)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / "secrets.json"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise SecretError(f"{self.path.name}: cannot read the secrets file ({exc})") from None
        if not isinstance(data, dict):
            raise SecretError(f"{self.path.name}: the secrets file is corrupt")
        return {str(k): str(v) for k, v in data.items()}

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".secrets.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, name: str, value: str) -> None:
        """Set secret ``name`` to ``value`` (at most 5 KiB, like Workers)."""
        validate_secret_name(name)
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise SecretError(
                f"secret {name} is {len(value.encode())} bytes; the limit is {MAX_SECRET_BYTES}"
            )
        data = self._read()
        data[name] = value
        self._write(data)

    def delete(self, name: str) -> bool:
        """Remove secret ``name``; return whether it existed."""
        data = self._read()
        if name not in data:
            return False
        del data[name]
        self._write(data)
        return True

    def names(self) -> list[str]:
        """The names of the stored secrets, sorted (never their values)."""
        return sorted(self._read())

    def load(self) -> dict[str, Secret]:
        """Every secret as a masked ``Secret`` string, for the deployment's ``env``."""
        return {k: Secret(v) for k, v in self._read().items()}
