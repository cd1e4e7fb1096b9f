"""Write, read and verify bundles.

A bundle is a directory (plus a .tar.gz of it) whose ``manifest.json`` holds
the sha256 of every other file. The runtime verifies every hash and the
schema version before it loads anything, so a flipped byte, a swapped model
or a stray file is refused with a message naming the file. Nothing in a
bundle is ever pickled.

Signatures (optional): ``signature.ed25519`` holds the 64-byte Ed25519 signature of the exact bytes of
``manifest.json``. The manifest pins the sha256 of every other file, so one signature covers the whole
bundle. The signature file is listed nowhere (it cannot be inside what it signs); it is the one file the
verifier accepts besides the manifest's list. ``load_bundle(..., public_key=...)`` checks it before it parses
anything else; without ``public_key`` an existing signature is ignored.
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
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.errors import BundleError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

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
SIGNATURE = "signature.ed25519"  # outside the manifest: signs its bytes


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
    # Every keyword of savez names an array (numpy's own allow_pickle keyword only exists from 2.1 on, so it is
    # not passed); the cast tells the type checker that no keyword here is a flag.
    savez: Any = np.savez
    savez(buf, **arrays)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: dict[str, Any]
    bundle_id: str
    signed: bool = False  # a signature file is present
    signature_verified: bool = False  # and it verified against the public key load_bundle was given

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


def write_bundle(
    out_dir: Path,
    members: dict[str, bytes],
    manifest: dict[str, Any],
    *,
    signing_key: Path | Ed25519PrivateKey | None = None,
) -> Bundle:
    """Write ``OUT/bundle/`` and ``OUT/bundle.tar.gz`` atomically and return the verified result.

    ``manifest`` gets ``schema``, ``schema_version`` and ``files`` filled in here,
    so a caller cannot forget a hash. With ``signing_key`` (an Ed25519 private key or its PEM file) the
    bundle also gets ``signature.ed25519`` over the manifest bytes.
    """
    if MANIFEST in members or SIGNATURE in members:
        raise BundleError(f"{MANIFEST} and {SIGNATURE} are written by write_bundle, not passed as members")
    private_key = load_signing_key(signing_key) if isinstance(signing_key, (str, Path)) else signing_key
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
        manifest_bytes = json_bytes(manifest)
        (staging / MANIFEST).write_bytes(manifest_bytes)
        if private_key is not None:
            (staging / SIGNATURE).write_bytes(private_key.sign(manifest_bytes))
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
    return load_bundle(final, public_key=private_key.public_key() if private_key is not None else None)


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


def verify_bundle(root: Path, manifest_bytes: bytes | None = None) -> dict[str, Any]:
    """Check schema, every listed hash and the absence of unlisted files; return the manifest.

    ``manifest_bytes``: the manifest as already read (and signature-checked) by the caller, so the bytes
    verified are the bytes used.
    """
    manifest_path = root / MANIFEST
    if manifest_bytes is None:
        manifest_bytes = _read_manifest_bytes(root)
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
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
        if name in (MANIFEST, SIGNATURE):
            raise BundleError(f"{manifest_path}: lists {name}, which cannot be inside the manifest")
        if not member.is_file():
            raise BundleError(f"{member}: listed in the manifest but missing", hint="copy the whole bundle again")
        actual = sha256_file(member)
        if actual != expected:
            raise BundleError(
                f"{member}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...)",
                hint="the bundle was altered or damaged in transit; copy it again or rebuild it",
            )
    listed = set(files) | {MANIFEST, SIGNATURE}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in listed:
            raise BundleError(f"{path}: file not listed in the manifest", hint="remove it or rebuild the bundle")
    return manifest


def _read_manifest_bytes(root: Path) -> bytes:
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found", hint="pass the bundle/ folder that edge-build wrote")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing", hint="pass the bundle/ folder that edge-build wrote")
    try:
        return manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{manifest_path}: unreadable ({exc.strerror or exc})") from None


def load_bundle(
    path: Path,
    extract_to: Path | None = None,
    *,
    public_key: Path | Ed25519PublicKey | None = None,
) -> Bundle:
    """Verify and open a bundle directory, or a bundle tarball (extracted to ``extract_to``).

    With ``public_key`` (an Ed25519 public key or its PEM file) the bundle must carry a signature made with
    the matching private key; it is checked on the raw manifest bytes before anything is parsed.
    """
    key: Ed25519PublicKey | None = None
    if public_key is not None:  # the device's own configuration: checked before the bundle is even looked at
        key = load_public_key(public_key) if isinstance(public_key, (str, Path)) else public_key
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        dest = extract_to or Path(tempfile.mkdtemp(prefix="edge-bundle-"))
        path = extract_tarball(path, dest)
    manifest_bytes = _read_manifest_bytes(path)
    signed = (path / SIGNATURE).is_file()
    if key is not None:
        name = str(public_key) if isinstance(public_key, (str, Path)) else ""
        verify_signature(path, manifest_bytes, key, key_name=name)
    manifest = verify_bundle(path, manifest_bytes)
    bundle_id = "sha256:" + sha256_bytes(manifest_bytes)
    return Bundle(root=path, manifest=manifest, bundle_id=bundle_id, signed=signed, signature_verified=key is not None)


# --------------------------------------------------------------------------- signatures


def verify_signature(root: Path, manifest_bytes: bytes, key: Ed25519PublicKey, *, key_name: str = "") -> None:
    """Raise BundleError unless ``root/signature.ed25519`` is ``key``'s signature of ``manifest_bytes``."""
    from cryptography.exceptions import InvalidSignature

    sig_path = root / SIGNATURE
    which = f" {key_name}" if key_name else ""
    if not sig_path.is_file():
        raise BundleError(
            f"{sig_path}: missing: this device only runs signed bundles",
            hint=f"build with `edge-build --signing-key KEY` using the private half of the public key{which}",
        )
    signature = sig_path.read_bytes()
    try:
        if len(signature) != 64:
            raise InvalidSignature
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            f"{sig_path}: signature does not verify with the device's public key{which}",
            hint="the manifest changed after signing or another key signed it; "
            "rebuild and sign with the matching key (`edge-build --signing-key KEY`)",
        ) from None


def sign_bundle(root: Path, signing_key: Path | Ed25519PrivateKey) -> Path:
    """Write (or replace) ``root/signature.ed25519`` over the manifest as it is on disk; returns its path.

    For signing on a separate host after the build. The tarball next to the bundle is not rewritten.
    """
    key = load_signing_key(signing_key) if isinstance(signing_key, (str, Path)) else signing_key
    data = _read_manifest_bytes(Path(root))
    target = Path(root) / SIGNATURE
    tmp = target.with_name(f".{SIGNATURE}.{os.getpid()}.tmp")
    tmp.write_bytes(key.sign(data))
    os.replace(tmp, target)
    return target


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the {what} {path}: {exc.strerror or exc}",
            hint="make one with build_scripts/make_signing_key.py",
        ) from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file ``path`` (unencrypted PKCS#8); UsageError naming the file otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _read_pem(path, "signing key")
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(
            f"signing key {path} is encrypted", hint="use an unencrypted PEM key on the signing host"
        ) from None
    except ValueError:
        raise UsageError(
            f"signing key {path} is not a PEM private key", hint="make one with build_scripts/make_signing_key.py"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(
            f"signing key {path} is a {type(key).__name__.removeprefix('_')}, not an Ed25519 key",
            hint="make one with build_scripts/make_signing_key.py",
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file ``path``; UsageError naming the file otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = _read_pem(path, "bundle public key")
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise UsageError(
            f"bundle public key {path} is not a PEM public key",
            hint="copy the .pub file that build_scripts/make_signing_key.py wrote",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"bundle public key {path} is not an Ed25519 key", hint="use an Ed25519 key pair")
    return key
