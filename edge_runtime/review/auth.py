"""Reviewer accounts: a credentials file of ``user:password-hash`` lines, hashed with werkzeug's scrypt helper.

The file is read at start; ``edge-review passwd FILE USER`` adds or replaces a user (the password comes from the
terminal or stdin, never from the command line). A plain-text password in the file is refused: it would work as
a hash of nothing and hide a mistake.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from edge_runtime.errors import UsageError

__all__ = ["Reviewers", "add_reviewer"]

USER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
HASH_PREFIXES = ("scrypt:", "pbkdf2:")


class Reviewers:
    """The accounts of one credentials file."""

    def __init__(self, hashes: dict[str, str]) -> None:
        self._hashes = hashes

    @classmethod
    def load(cls, path: Path) -> Reviewers:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"cannot read the reviewers file {path}: {getattr(exc, 'strerror', None) or exc}",
                hint="create it with `edge-review passwd FILE USER`",
            ) from None
        hashes: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, hashed = line.strip().partition(":")
            if not sep or not USER.match(user) or not hashed.startswith(HASH_PREFIXES):
                raise UsageError(
                    f"{path}: line {number} is not 'user:hash'",
                    hint="write users with `edge-review passwd FILE USER` (passwords are stored hashed)",
                )
            hashes[user] = hashed
        if not hashes:
            raise UsageError(f"{path}: no reviewer in the file", hint="add one with `edge-review passwd FILE USER`")
        return cls(hashes)

    def check(self, user: str, password: str) -> bool:
        hashed = self._hashes.get(user)
        if hashed is None:
            # Same work for an unknown user as for a wrong password: no timing hint about who exists.
            check_password_hash(generate_password_hash("x"), password)
            return False
        return check_password_hash(hashed, password)


def add_reviewer(path: Path, user: str, password: str) -> None:
    """Add ``user`` to the credentials file (or replace its password); the file is kept at mode 600."""
    if not USER.match(user):
        raise UsageError(f"invalid reviewer name {user!r}", hint="letters, digits, '.', '_', '@' and '-', 64 at most")
    if len(password) < 8:
        raise UsageError("the password is shorter than 8 characters", hint="choose a longer one")
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    lines = [line for line in lines if line.partition(":")[0] != user]
    lines.append(f"{user}:{generate_password_hash(password)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
