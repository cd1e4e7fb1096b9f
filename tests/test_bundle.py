from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import (
    MANIFEST,
    PROTOTYPES,
    SCHEMA_VERSION,
    json_bytes,
    load_bundle,
    npz_bytes,
    write_bundle,
)
from edge_runtime.errors import BundleError
from edge_runtime.head.prototypes import PrototypeTable


def _members() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    table = PrototypeTable.from_float(rng.normal(size=(5, 8)).astype(np.float32), "int8")
    return {
        "model.onnx": b"\x08\x07model-bytes",
        PROTOTYPES: npz_bytes(table.to_arrays()),
        "labels.json": json_bytes([{"index": 0, "sku": "a"}]),
        "report/build_report.md": b"# report\n",
    }


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "out", _members(), {"profile": {"name": "t"}}).root


def test_round_trip(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["schema_version"] == SCHEMA_VERSION
    assert set(bundle.manifest["files"]) == set(_members())
    assert bundle.bundle_id.startswith("sha256:")
    table = PrototypeTable.from_arrays(bundle.read_arrays(PROTOTYPES))
    assert table.precision == "int8" and len(table) == 5
    assert bundle.read_json("labels.json")[0]["sku"] == "a"


def test_tarball_round_trip_is_reproducible(tmp_path: Path, bundle_dir: Path) -> None:
    tarball = bundle_dir.parent / "bundle.tar.gz"
    first = tarball.read_bytes()
    write_bundle(bundle_dir.parent, _members(), {"profile": {"name": "t"}})
    # Same members and manifest (up to nothing time-dependent) give the same archive.
    assert tarball.read_bytes() == first
    opened = load_bundle(tarball, extract_to=tmp_path / "x")
    assert opened.manifest["files"] == load_bundle(bundle_dir).manifest["files"]


@pytest.mark.parametrize("name", [*sorted(_members()), MANIFEST])
def test_one_flipped_byte_in_any_file_is_refused(tmp_path: Path, bundle_dir: Path, name: str) -> None:
    target = bundle_dir / name
    data = bytearray(target.read_bytes())
    for pos in (0, len(data) // 2, len(data) - 1):
        copy = tmp_path / f"copy-{pos}"
        shutil.copytree(bundle_dir, copy)
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        (copy / name).write_bytes(bytes(flipped))
        with pytest.raises(BundleError) as err:
            load_bundle(copy)
        if name != MANIFEST:
            assert name.split("/")[-1] in str(err.value)


def test_missing_and_extra_files_are_refused(tmp_path: Path, bundle_dir: Path) -> None:
    missing = tmp_path / "missing"
    shutil.copytree(bundle_dir, missing)
    (missing / "labels.json").unlink()
    with pytest.raises(BundleError, match=r"labels\.json.*missing"):
        load_bundle(missing)
    extra = tmp_path / "extra"
    shutil.copytree(bundle_dir, extra)
    (extra / "evil.py").write_text("print('hi')")
    with pytest.raises(BundleError, match=r"evil\.py.*not listed"):
        load_bundle(extra)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_wrong_schema_version_is_refused(bundle_dir: Path) -> None:
    path = bundle_dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version"):
        load_bundle(bundle_dir)


def test_a_pickle_inside_the_prototype_file_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, rows=np.array([{"evil": 1}], dtype=object), scales=np.ones(1, np.float32))
    members = _members()
    members[PROTOTYPES] = buf.getvalue()  # hashes match: only the loader's no-pickle rule stops it
    bundle = write_bundle(tmp_path / "out", members, {})
    with pytest.raises(BundleError, match="refused"):
        bundle.read_arrays(PROTOTYPES)
    with pytest.raises(BundleError, match="object"):
        npz_bytes({"x": np.array([pickle], dtype=object)})


def test_unsafe_tarball_members_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BundleError, match="unsafe"):
        load_bundle(evil, extract_to=tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(BundleError, match="not a readable"):
        load_bundle(junk, extract_to=tmp_path / "dest2")
