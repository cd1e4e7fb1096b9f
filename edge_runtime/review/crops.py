"""Crop files: JPEG bytes stored once under ``DATA/crops/ab/abcdef...jpg``, named by their sha256.

Content addressing makes a redelivered or repeated crop cost nothing and lets several collectors share one folder
(a network mount) without coordination: two writers of one name write the same bytes. Files are written to a
temporary name and renamed, so a crash never leaves half a JPEG under a real name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["CropFiles", "DiskFull"]


class DiskFull(OSError):
    """The crop folder's disk (or quota) is full."""


class CropFiles:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "crops"  # made on the first write

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"not a sha256: {sha[:70]!r}")
        return self.root / sha[:2] / f"{sha}.jpg"

    def write(self, data: bytes) -> str:
        """Store ``data``; its sha256. DiskFull when the disk has no room (nothing is left behind)."""
        sha = self.digest(data)
        target = self.path(sha)
        if target.is_file():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(exc.errno, f"no space for crops in {self.root}") from None
            raise
        return sha

    def read(self, sha: str) -> bytes | None:
        try:
            return self.path(sha).read_bytes()
        except (OSError, ValueError):
            return None

    def remove(self, sha: str) -> int:
        """Delete a crop file; the bytes freed (0 when it was not there)."""
        path = self.path(sha)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size
