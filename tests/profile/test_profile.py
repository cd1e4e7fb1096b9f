"""Device profiles: shipped files load, errors are complete and point at the right file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_runtime.errors import EXIT_USAGE, ProfileError
from edge_runtime.profile import (
    DEFAULT_PROFILE,
    PROFILES_ENV,
    DeviceProfile,
    list_profiles,
    load_profile,
    profile_search_dirs,
    resolve_profile_path,
)

SHIPPED = ["cart-v2", "dev-cpu", "jetson-orin-base", "shelf-cam-v1"]
REPO_PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"

MINIMAL = """
[device]
name = "tiny"
platform = "generic-cpu"
arch = "x86_64"
memory_budget_mib = 512

[backend]
prefer = ["onnxruntime-cpu"]
precisions = ["fp32"]
input_sizes = [224]
max_latency_ms = 100

[[cameras]]
name = "cam"
source = "/dev/video0"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path | str) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    return info.value


# --------------------------------------------------------------------------- shipped profiles


def test_shipped_profiles_are_listed():
    assert set(SHIPPED) <= set(list_profiles())
    assert DEFAULT_PROFILE in list_profiles()


@pytest.mark.parametrize("name", list_profiles())
def test_every_listed_profile_loads(name):
    profile = load_profile(name)
    assert isinstance(profile, DeviceProfile)
    assert profile.source_files and profile.source_files[0].name == f"{name}.toml"
    assert len(profile.content_hash()) == 64


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_by_path(name):
    profile = load_profile(REPO_PROFILES / f"{name}.toml")
    assert profile.name == name


def test_dev_cpu_is_the_documented_default():
    p = load_profile(REPO_PROFILES / "dev-cpu.toml")
    assert p.device.arch == "x86_64" and p.device.platform == "generic-cpu"
    assert p.device.memory_budget_mib == 1024 and p.device.min_headroom == pytest.approx(0.20)
    assert p.backend.prefer == ["onnxruntime-cpu"]
    assert p.backend.precisions == ["fp32", "int8"] and p.backend.input_sizes == [224, 192]
    assert p.backend.max_latency_ms == 200 and p.backend.threads == 0 and p.backend.calibration_images == 64
    assert [(c.name, c.source, c.width, c.height, c.fps) for c in p.cameras] == [("demo", "", 640, 480, 10.0)]
    assert p.mqtt_device_id == "dev-cpu-0" and p.metrics.port == 9108
    assert p.source_files == ((REPO_PROFILES / "dev-cpu.toml").resolve(),)


def test_cart_and_shelf_inherit_from_orin_base():
    base = load_profile(REPO_PROFILES / "jetson-orin-base.toml")
    cart = load_profile(REPO_PROFILES / "cart-v2.toml")
    shelf = load_profile(REPO_PROFILES / "shelf-cam-v1.toml")
    assert base.device.arch == "aarch64" and base.backend.table_precisions == ["fp16", "int8"]
    assert [p.name for p in cart.source_files] == ["cart-v2.toml", "jetson-orin-base.toml"]
    assert cart.device.memory_budget_mib == 1536 and cart.backend.max_latency_ms == 40
    assert cart.backend.prefer == base.backend.prefer and cart.backend.threads == 4
    assert cart.mqtt.tls_ca_file == base.mqtt.tls_ca_file and cart.mqtt.tls_ca_file.startswith("/etc/edge/")
    assert [(c.name, c.source) for c in cart.cameras] == [("front", "csi://0"), ("basket", "csi://1")]
    assert cart.regions.mode == "full" and (cart.sampler.idle_fps, cart.sampler.active_fps) == (2.0, 15.0)
    assert cart.mqtt_device_id == "cart-v2"
    assert shelf.device.memory_budget_mib == 768 and shelf.backend.max_latency_ms == 150
    assert shelf.regions.mode == "fixed" and len(shelf.regions.fixed) >= 4
    assert (shelf.sampler.idle_fps, shelf.sampler.active_fps) == (0.2, 1.0)
    assert shelf.readiness.planned_catalogue_size == 3000
    assert len(shelf.cameras) == 1 and shelf.cameras[0].fps == 5.0


# --------------------------------------------------------------------------- a single file


def test_minimal_profile_gets_defaults(tmp_path):
    path = write(tmp_path, "tiny.toml", MINIMAL)
    p = load_profile(path)
    assert p.name == "tiny" and p.mqtt_device_id == "tiny"
    assert p.source_files == (path.resolve(),)
    assert p.device.min_headroom == pytest.approx(0.20)
    assert p.backend.table_precisions == ["fp32", "fp16", "int8"] and p.backend.allow_fallback is True
    assert p.backend.embedding_output == "auto" and p.backend.calibration_images == 100
    assert (p.cameras[0].width, p.cameras[0].height, p.cameras[0].fps) == (1280, 720, 30.0)
    assert p.regions.mode == "full" and p.regions.fixed == []
    assert p.mqtt.port == 1883 and p.mqtt.qos == 1 and p.metrics.port == 9108
    assert p.outbox.max_mib == 64 and p.health.frame_stall_s == 10
    assert p.readiness.planned_catalogue_size == 1000 and p.routing.accept_precision == 0.98
    # metadata is not part of the schema
    assert "source_files" not in p.model_dump() and "extends" not in p.model_dump()


def test_profile_is_frozen(tmp_path):
    p = load_profile(write(tmp_path, "tiny.toml", MINIMAL))
    with pytest.raises(ValidationError, match="frozen"):
        p.device.memory_budget_mib = 1  # type: ignore[misc]


def test_unknown_key_names_key_file_and_allowed(tmp_path):
    path = write(tmp_path, "typo.toml", MINIMAL.replace('precisions = ["fp32"]', 'precisions = ["fp32"]\nprecison = 1'))
    err = problems_of(path)
    assert err.exit_code == EXIT_USAGE
    assert err.message == "invalid device profile typo.toml (1 problem)"
    assert len(err.problems) == 1
    line = err.problems[0]
    assert line.startswith("typo.toml: backend.precison: unknown key (allowed: prefer, precisions, ")
    assert "did you mean 'precisions'" in line
    assert "backend.precison" in str(err)


def test_unknown_top_level_key_and_section(tmp_path):
    path = write(tmp_path, "x.toml", "extendz = 'a'\n" + MINIMAL + "\n[camera]\nname = 'x'\n")
    err = problems_of(path)
    text = "\n".join(err.problems)
    assert "x.toml: extendz: unknown key (allowed: extends, device, backend" in text
    assert "x.toml: camera: unknown key" in text


def test_bad_type_is_not_coerced(tmp_path):
    path = write(tmp_path, "t.toml", MINIMAL.replace("memory_budget_mib = 512", 'memory_budget_mib = "512"'))
    err = problems_of(path)
    assert err.problems == ["t.toml: device.memory_budget_mib: Input should be a valid integer"]


def test_bad_range(tmp_path):
    path = write(tmp_path, "r.toml", MINIMAL.replace("memory_budget_mib = 512", "memory_budget_mib = 8"))
    err = problems_of(path)
    assert err.problems == ["r.toml: device.memory_budget_mib: Input should be greater than or equal to 16"]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("input_sizes = [224]", "input_sizes = [200]", "backend.input_sizes[0]"),
        ("input_sizes = [224]", "input_sizes = [224, 224]", "backend.input_sizes"),
        ('prefer = ["onnxruntime-cpu"]', 'prefer = ["openvino"]', "backend.prefer[0]"),
        ('prefer = ["onnxruntime-cpu"]', "prefer = []", "backend.prefer"),
        ('arch = "x86_64"', 'arch = "armv7"', "device.arch"),
        ('name = "tiny"', 'name = "has space"', "device.name"),
        ("max_latency_ms = 100", "max_latency_ms = inf", "backend.max_latency_ms"),
        ("max_latency_ms = 100", "max_latency_ms = 100\nthreads = 65", "backend.threads"),
    ],
)
def test_field_constraints(tmp_path, old, new, key):
    err = problems_of(write(tmp_path, "c.toml", MINIMAL.replace(old, new)))
    assert [p.split(": ")[1] for p in err.problems] == [key]


def test_several_errors_reported_at_once(tmp_path):
    text = (
        MINIMAL.replace("memory_budget_mib = 512", "memory_budget_mib = 1")
        .replace('arch = "x86_64"', 'arch = "sparc"')
        .replace("max_latency_ms = 100", "max_latency_ms = -5\nbogus = true")
    )
    text += "\n[mqtt]\nport = 70000\n\n[[cameras]]\nname = 'cam'\nsource = 'x'\n"
    err = problems_of(write(tmp_path, "many.toml", text))
    assert len(err.problems) >= 5
    assert err.message == f"invalid device profile many.toml ({len(err.problems)} problems)"
    keys = {p.split(": ")[1] for p in err.problems}
    assert {"device.memory_budget_mib", "device.arch", "backend.max_latency_ms", "backend.bogus", "mqtt.port"} <= keys
    assert all(p.startswith("many.toml: ") for p in err.problems)


def test_duplicate_camera_names(tmp_path):
    err = problems_of(write(tmp_path, "d.toml", MINIMAL + "\n[[cameras]]\nname = 'cam'\nsource = 'y'\n"))
    assert len(err.problems) == 1 and err.problems[0].startswith("d.toml: cameras: duplicate entries: cam")


def test_missing_required_sections(tmp_path):
    err = problems_of(write(tmp_path, "empty.toml", "[device]\nname = 'x'\n"))
    keys = {p.split(": ")[1] for p in err.problems}
    assert {"device.platform", "device.arch", "device.memory_budget_mib", "backend", "cameras"} <= keys


# --------------------------------------------------------------------------- validators


def test_fixed_regions_need_a_box(tmp_path):
    err = problems_of(write(tmp_path, "f.toml", MINIMAL + "\n[regions]\nmode = 'fixed'\n"))
    assert err.problems == ['f.toml: regions.fixed: mode = "fixed" needs at least one [x, y, w, h] box']


def test_fixed_regions_box_shape(tmp_path):
    text = MINIMAL + "\n[regions]\nmode = 'fixed'\nfixed = [[0, 0, 10, 10], [1, 2, 3], [-1, 0, 5, 5], [0, 0, 0, 5]]\n"
    err = problems_of(write(tmp_path, "f.toml", text))
    keys = [p.split(": ")[1] for p in err.problems]
    assert keys == ["regions.fixed[1]", "regions.fixed[2]", "regions.fixed[3]"]


def test_fixed_regions_ok(tmp_path):
    text = MINIMAL + "\n[regions]\nmode = 'fixed'\nfixed = [[0, 0, 10, 10], [10, 0, 10, 10]]\n"
    p = load_profile(write(tmp_path, "f.toml", text))
    assert p.regions.fixed == [[0, 0, 10, 10], [10, 0, 10, 10]]


def test_detector_mode_needs_model(tmp_path):
    err = problems_of(write(tmp_path, "d.toml", MINIMAL + "\n[regions]\nmode = 'detector'\n"))
    assert err.problems == ['d.toml: regions.detector_model: mode = "detector" needs detector_model']
    ok = load_profile(
        write(tmp_path, "d2.toml", MINIMAL + "\n[regions]\nmode = 'detector'\ndetector_model = 'det.onnx'\n")
    )
    assert ok.regions.detector_model == "det.onnx"


def test_sampler_active_not_below_idle(tmp_path):
    err = problems_of(write(tmp_path, "s.toml", MINIMAL + "\n[sampler]\nidle_fps = 5\nactive_fps = 1\n"))
    assert len(err.problems) == 1 and err.problems[0].startswith("s.toml: sampler.active_fps: ")


def test_mqtt_cert_and_key_together(tmp_path):
    err = problems_of(write(tmp_path, "m.toml", MINIMAL + "\n[mqtt]\ntls_cert_file = '/x.crt'\n"))
    assert len(err.problems) == 1 and "mqtt.tls_key_file" in err.problems[0]


def test_mqtt_device_id_override(tmp_path):
    p = load_profile(write(tmp_path, "m.toml", MINIMAL + "\n[mqtt]\ndevice_id = 'unit-7'\n"))
    assert p.mqtt_device_id == "unit-7" and p.name == "tiny"


# --------------------------------------------------------------------------- extends


def test_extends_override_semantics(tmp_path):
    write(
        tmp_path,
        "parent.toml",
        MINIMAL
        + """
[[cameras]]
name = "second"
source = "csi://1"

[sampler]
idle_fps = 1.0
active_fps = 10.0

[mqtt]
host = "broker"
port = 8883
""",
    )
    child = write(
        tmp_path,
        "child.toml",
        """
        extends = "parent"

        [device]
        name = "child"

        [backend]
        input_sizes = [160]

        [[cameras]]
        name = "only"
        source = "rtsp://cam"

        [mqtt]
        port = 1884
        """,
    )
    p = load_profile(child)
    assert p.source_files == (child.resolve(), (tmp_path / "parent.toml").resolve())
    assert p.name == "child"  # child scalar replaces
    assert p.device.platform == "generic-cpu" and p.device.memory_budget_mib == 512  # tables merge
    assert p.backend.input_sizes == [160] and p.backend.prefer == ["onnxruntime-cpu"]  # arrays replace
    assert [c.name for c in p.cameras] == ["only"]  # arrays of tables replace too
    assert (p.mqtt.host, p.mqtt.port) == ("broker", 1884)
    assert (p.sampler.idle_fps, p.sampler.active_fps) == (1.0, 10.0)


def test_extends_by_relative_path_and_three_levels(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "site").mkdir()
    write(tmp_path / "base", "root.toml", MINIMAL)
    write(tmp_path / "base", "mid.toml", 'extends = "root"\n[device]\nmemory_budget_mib = 600\n')
    leaf = write(tmp_path / "site", "leaf.toml", 'extends = "../base/mid.toml"\n[device]\nname = "leaf"\n')
    p = load_profile(leaf)
    assert [f.name for f in p.source_files] == ["leaf.toml", "mid.toml", "root.toml"]
    assert (p.name, p.device.memory_budget_mib, p.device.platform) == ("leaf", 600, "generic-cpu")


def test_extends_name_found_in_search_dirs(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    write(lib, "libbase.toml", MINIMAL)
    monkeypatch.setenv(PROFILES_ENV, str(lib))
    (tmp_path / "elsewhere").mkdir()
    child = write(tmp_path / "elsewhere", "c.toml", 'extends = "libbase"\n[device]\nname = "c"\n')
    assert load_profile(child).source_files[1] == (lib / "libbase.toml").resolve()


def test_extends_same_dir_wins_over_search_dirs(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    write(lib, "base.toml", MINIMAL.replace("memory_budget_mib = 512", "memory_budget_mib = 100"))
    monkeypatch.setenv(PROFILES_ENV, str(lib))
    write(tmp_path, "base.toml", MINIMAL)
    child = write(tmp_path, "c.toml", 'extends = "base"\n')
    assert load_profile(child).device.memory_budget_mib == 512


def test_error_attributed_to_parent_that_set_key(tmp_path):
    write(tmp_path, "parent.toml", MINIMAL.replace("max_latency_ms = 100", "max_latency_ms = 0\nprecison = 1"))
    child = write(tmp_path, "child.toml", 'extends = "parent"\n[device]\nmemory_budget_mib = 4\n')
    err = problems_of(child)
    assert err.message == "invalid device profile child.toml (3 problems)"
    assert "parent.toml: backend.max_latency_ms: Input should be greater than 0" in err.problems
    assert any(p.startswith("parent.toml: backend.precison: unknown key") for p in err.problems)
    assert "child.toml: device.memory_budget_mib: Input should be greater than or equal to 16" in err.problems


def test_child_override_takes_the_blame(tmp_path):
    write(tmp_path, "parent.toml", MINIMAL)
    child = write(tmp_path, "child.toml", 'extends = "parent"\n[[cameras]]\nname = "c"\nsource = "x"\nfps = 0\n')
    assert problems_of(child).problems == ["child.toml: cameras[0].fps: Input should be greater than 0"]


def test_missing_key_blames_most_derived(tmp_path):
    write(tmp_path, "parent.toml", MINIMAL.replace('arch = "x86_64"\n', ""))
    child = write(tmp_path, "child.toml", 'extends = "parent"\n')
    assert problems_of(child).problems == ["child.toml: device.arch: Field required"]


def test_missing_parent(tmp_path):
    child = write(tmp_path, "orphan.toml", 'extends = "no-such-parent"\n' + MINIMAL)
    err = problems_of(child)
    assert "orphan.toml" in err.message and "no-such-parent" in err.message
    assert err.exit_code == EXIT_USAGE


def test_missing_parent_path(tmp_path):
    child = write(tmp_path, "orphan.toml", 'extends = "../gone/base.toml"\n' + MINIMAL)
    err = problems_of(child)
    assert "orphan.toml" in err.message and "../gone/base.toml" in err.message


def test_extends_must_be_a_string(tmp_path):
    err = problems_of(write(tmp_path, "e.toml", "extends = 3\n" + MINIMAL))
    assert err.problems and err.problems[0].startswith("e.toml: extends: ")


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.toml", 'extends = "b"\n' + MINIMAL)
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    err = problems_of(tmp_path / "a.toml")
    assert err.message == "extends cycle: a.toml -> b.toml -> a.toml"


def test_self_extends(tmp_path):
    path = write(tmp_path, "self.toml", 'extends = "self"\n' + MINIMAL)
    assert problems_of(path).message == "extends cycle: self.toml -> self.toml"


def test_cycle_below_the_entry_file(tmp_path):
    write(tmp_path, "b.toml", 'extends = "c"\n')
    write(tmp_path, "c.toml", 'extends = "b"\n')
    entry = write(tmp_path, "a.toml", 'extends = "b"\n')
    assert problems_of(entry).message == "extends cycle: b.toml -> c.toml -> b.toml"


# --------------------------------------------------------------------------- syntax and resolution


def test_toml_syntax_error_names_file_and_position(tmp_path):
    path = write(tmp_path, "broken.toml", "[device]\nname = \n")
    err = problems_of(path)
    assert "broken.toml" in err.message and "line 2" in err.message
    assert err.exit_code == EXIT_USAGE


def test_toml_syntax_error_in_parent(tmp_path):
    write(tmp_path, "parent.toml", "[device\n")
    err = problems_of(write(tmp_path, "child.toml", 'extends = "parent"\n'))
    assert "parent.toml" in err.message and "line 1" in err.message


def test_resolve_by_name_and_by_path(tmp_path, monkeypatch):
    write(tmp_path, "mine.toml", MINIMAL)
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    assert profile_search_dirs()[0] == tmp_path
    assert resolve_profile_path("mine") == tmp_path / "mine.toml"
    assert "mine" in list_profiles()
    assert load_profile("mine").name == "tiny"
    by_path = tmp_path / "mine.toml"
    assert resolve_profile_path(str(by_path)) == by_path
    monkeypatch.chdir(tmp_path)
    assert resolve_profile_path("mine.toml") == Path("mine.toml")
    assert resolve_profile_path("./mine.toml") == Path("./mine.toml")


def test_env_dir_shadows_repo_profiles(tmp_path, monkeypatch):
    write(tmp_path, "dev-cpu.toml", MINIMAL)
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    assert load_profile("dev-cpu").name == "tiny"


def test_unknown_name_lists_available_and_dirs(tmp_path, monkeypatch):
    write(tmp_path, "mine.toml", MINIMAL)
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    with pytest.raises(ProfileError) as info:
        resolve_profile_path("nonexistent-profile")
    err = info.value
    assert "nonexistent-profile" in err.message
    text = "\n".join(err.problems)
    assert "mine" in text and str(tmp_path) in text


def test_missing_path(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        resolve_profile_path(str(tmp_path / "absent.toml"))
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.toml")


# --------------------------------------------------------------------------- content hash


def test_content_hash_stable_and_sensitive(tmp_path):
    path = write(tmp_path, "h.toml", MINIMAL)
    first, second = load_profile(path), load_profile(path)
    assert first.content_hash() == second.content_hash()
    assert len(first.content_hash()) == 64 and int(first.content_hash(), 16) >= 0
    path.write_text(MINIMAL.replace("max_latency_ms = 100", "max_latency_ms = 101"), encoding="utf-8")
    assert load_profile(path).content_hash() != first.content_hash()


def test_content_hash_ignores_layout_and_source(tmp_path):
    """Same resolved values -> same hash, whether written flat, with defaults spelled out, or via extends."""
    flat = load_profile(write(tmp_path, "flat.toml", MINIMAL))
    explicit = load_profile(write(tmp_path, "explicit.toml", MINIMAL + "\n[metrics]\nport = 9108\n"))
    write(tmp_path, "parent.toml", MINIMAL.replace('name = "tiny"', 'name = "other"'))
    derived = load_profile(write(tmp_path, "derived.toml", 'extends = "parent"\n[device]\nname = "tiny"\n'))
    assert flat.content_hash() == explicit.content_hash() == derived.content_hash()
    assert flat.source_files != derived.source_files


@pytest.mark.parametrize("name", SHIPPED)
def test_json_round_trip_keeps_hash(name):
    """A bundle stores model_dump(mode="json"); re-validating it must give the same profile and hash."""
    profile = load_profile(REPO_PROFILES / f"{name}.toml")
    again = DeviceProfile.model_validate(profile.model_dump(mode="json"), strict=True)
    assert again.content_hash() == profile.content_hash()
    assert again.source_files == ()


# --------------------------------------------------------------------------- the package and its report


def test_a_chain_with_problems_reads_exactly_so(tmp_path):
    # The whole report, byte for byte: the count, the hint, each line blamed on the file that set the key.
    write(tmp_path, "base.toml", MINIMAL.replace("[backend]", "[backend]\nprecison = 1"))
    child = write(tmp_path, "child.toml", 'extends = "base"\n[device]\nmemory_budget_mib = 8\n[mqttt]\nport = 1\n')
    assert str(problems_of(child)) == (
        "invalid device profile child.toml (3 problems) (fix: compare with device_profiles/dev-cpu.toml (complete"
        " and commented); the schema is edge_runtime/profile/schema.py)\n"
        "  - child.toml: device.memory_budget_mib: Input should be greater than or equal to 16\n"
        "  - base.toml: backend.precison: unknown key (allowed: prefer, precisions, input_sizes, table_precisions,"
        " max_latency_ms, threads, allow_fallback, embedding_output, calibration_images); did you mean 'precisions'?\n"
        "  - child.toml: mqttt: unknown key (allowed: extends, device, backend, cameras, regions, sampler, mqtt,"
        " outbox, metrics, routing, head, train, readiness, health, security, scene); did you mean 'mqtt'?"
    )


def test_the_hint_names_the_schema_file_that_exists(tmp_path):
    err = problems_of(write(tmp_path, "bad.toml", MINIMAL.replace("arch", "arc")))
    schema = err.hint.rsplit("the schema is ", 1)[1]
    assert (REPO_PROFILES.parent / schema).is_file()


def test_the_package_keeps_the_names_other_modules_import():
    import edge_runtime.profile as package

    for name in (
        *("Backend", "BackendName", "Camera", "DEFAULT_PROFILE", "Device", "DeviceProfile", "HeadFit", "Health"),
        *("Metrics", "Mqtt", "Outbox", "PROFILES_ENV", "Precision", "Readiness", "Regions", "Routing", "Sampler"),
        *("Security", "list_profiles", "load_profile", "profile_search_dirs", "resolve_profile_path", "merge_chain"),
    ):
        assert hasattr(package, name), name
    assert set(package.__all__) <= set(dir(package))
