"""Write, read and verify bundles.

A bundle is a directory (plus a .tar.gz of it) whose ``manifest.json`` holds
the sha256 of every other file. The runtime verifies every hash and the
schema version before it loads anything, so a flipped byte, a swapped model
or a stray file is refused with a message naming the file. Nothing in a
bundle is ever pickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import BundleError

SCHEMA = "edge.bundle/1"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TARBALL = "bundle.tar.gz"
BUNDLE_DIR = "bundle"

# Well-known member names; the manifest's "files" map is the authority.
MODEL = "model.onnx"
PROTOTYPES = "prototypes.npz"
LABELS = "labels.json"
HEAD = "head.json"
PROFILE = "profile.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as .npz; object arrays are refused so no pickle can enter a bundle."""
    for key, value in arrays.items():
        if value.dtype == object:
            raise BundleError(f"array {key!r} has dtype object, which would need pickle")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    bundle_id: str

    def path(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.root} has no member {name!r}")
        return self.root / name

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.path(name).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{self.root / name}: not valid JSON ({exc})") from None

    def read_arrays(self, name: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path(name), allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except ValueError as exc:
            raise BundleError(
                f"{self.root / name}: refused ({exc})", hint="rebuild the bundle with edge-build"
            ) from None
        except (OSError, EOFError) as exc:
            raise BundleError(f"{self.root / name}: unreadable array file ({exc})") from None


def write_bundle(out_dir: Path, members: dict[str, bytes], manifest: dict[str, Any]) -> Bundle:
    """Write ``OUT/bundle/`` and ``OUT/bundle.tar.gz`` atomically and return the verified result.

    ``manifest`` gets ``schema``, ``schema_version`` and ``files`` filled in here,
    so a caller cannot forget a hash.
    """
    if MANIFEST in members:
        raise BundleError("the manifest is written by write_bundle, not passed as a member")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = dict(manifest)
    manifest["schema"] = SCHEMA
    manifest["schema_version"] = SCHEMA_VERSION
    manifest["files"] = {name: sha256_bytes(data) for name, data in sorted(members.items())}

    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir))
    try:
        for name, data in members.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (staging / MANIFEST).write_bytes(json_bytes(manifest))
        final = out_dir / BUNDLE_DIR
        if final.exists():
            old = out_dir / f".bundle-old-{os.getpid()}"
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_tarball(final, out_dir / TARBALL)
    return load_bundle(final)


def _write_tarball(bundle_dir: Path, tarball: Path) -> None:
    """Reproducible tarball: sorted members, fixed mtime and owner."""
    tmp = tarball.with_name(f".{tarball.name}.{os.getpid()}.tmp")  # unique: two builds may share OUT
    with tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
            info = tar.gettarinfo(str(path), arcname=f"{BUNDLE_DIR}/{path.relative_to(bundle_dir).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    os.replace(tmp, tarball)


def extract_tarball(tarball: Path, dest: Path) -> Path:
    """Unpack a bundle tarball, refusing links, absolute paths and ``..`` members."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                    raise BundleError(
                        f"{tarball}: unsafe member {m.name!r}", hint="use a tarball written by edge-build"
                    )
                if not parts or parts[0] != BUNDLE_DIR:
                    raise BundleError(f"{tarball}: member {m.name!r} is outside {BUNDLE_DIR}/")
            for m in members:
                if m.isfile():
                    target = dest / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    target.write_bytes(src.read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{tarball}: not a readable bundle tarball ({exc})") from None
    return dest / BUNDLE_DIR


def verify_bundle(root: Path) -> dict[str, Any]:
    """Check schema, every listed hash and the absence of unlisted files; return the manifest."""
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found", hint="pass the bundle/ folder that edge-build wrote")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing", hint="pass the bundle/ folder that edge-build wrote")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: corrupt manifest ({exc})", hint="rebuild the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{manifest_path}: not an edge_runtime bundle manifest (schema {SCHEMA} expected)")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle schema version {version!r}, this edge_runtime reads {SCHEMA_VERSION}",
            hint="rebuild the bundle with the edge-build that matches this runtime",
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{manifest_path}: no file list")
    for name, expected in sorted(files.items()):
        member = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{manifest_path}: unsafe file name {name!r}")
        if not member.is_file():
            raise BundleError(f"{member}: listed in the manifest but missing", hint="copy the whole bundle again")
        actual = sha256_file(member)
        if actual != expected:
            raise BundleError(
                f"{member}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...)",
                hint="the bundle was altered or damaged in transit; copy it again or rebuild it",
            )
    listed = set(files) | {MANIFEST}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in listed:
            raise BundleError(f"{path}: file not listed in the manifest", hint="remove it or rebuild the bundle")
    return manifest


def load_bundle(path: Path, extract_to: Path | None = None) -> Bundle:
    """Verify and open a bundle directory, or a bundle tarball (extracted to ``extract_to``)."""
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        dest = extract_to or Path(tempfile.mkdtemp(prefix="edge-bundle-"))
        path = extract_tarball(path, dest)
    manifest = verify_bundle(path)
    bundle_id = "sha256:" + sha256_file(path / MANIFEST)
    return Bundle(root=path, manifest=manifest, bundle_id=bundle_id)
