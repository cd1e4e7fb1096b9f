"""Make an Ed25519 key pair for signing bundles.

    python build_scripts/make_signing_key.py --out keys/            # keys/edge-bundle.key and keys/edge-bundle.pub

The private key (PKCS#8 PEM, mode 0600) stays on the signing host: ``edge-build --signing-key keys/edge-bundle.key``.
The public key (PEM) goes onto every device, e.g. ``/etc/edge/bundle-signing.pub``, named by the profile's
``[security] public_key_file`` and passed to ``edge-run --public-key`` by the systemd unit. The fingerprint printed
is the sha256 of the raw 32-byte public key, to compare the two halves by eye.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def fingerprint(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def write_key_pair(out: Path, name: str = "edge-bundle", *, force: bool = False) -> tuple[Path, Path]:
    """Write ``out/NAME.key`` (0600) and ``out/NAME.pub``; refuses to overwrite unless ``force``."""
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    if not force and (private_path.exists() or public_path.exists()):
        raise FileExistsError(f"{private_path} or {public_path} exists; pass --force to replace the key pair")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created 0600 from the start: never world-readable, not even for a moment.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for NAME.key and NAME.pub")
    parser.add_argument("--name", default="edge-bundle", help="file name stem (default edge-bundle)")
    parser.add_argument("--force", action="store_true", help="replace an existing key pair")
    args = parser.parse_args(argv)
    try:
        private_path, public_path = write_key_pair(args.out, args.name, force=args.force)
    except (FileExistsError, OSError) as exc:
        print(f"make_signing_key: error: {exc}", file=sys.stderr)
        return 2
    key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    print(f"private key {private_path} (keep it on the signing host)")
    print(f"public key  {public_path} (install on devices, e.g. /etc/edge/bundle-signing.pub)")
    print(f"fingerprint {fingerprint(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
