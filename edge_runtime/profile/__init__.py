"""Device profiles: one validated TOML file per device class. This room holds the schema (schema.py), finding,
reading and merging profiles (loader.py) and the problem report (problems.py).

A profile says what a device can afford (memory budget, latency ceiling, which
backends and precisions exist on it), what it looks at (cameras, regions) and
how it talks to the store (MQTT, outbox, metrics). edge-build picks a model
variant against it, edge-run runs with it, edge-bench checks it on hardware.

Profiles may ``extends = "other"`` a parent. Tables merge key by key, arrays and
scalars in the child replace the parent's, and the merged result is validated
once. Every problem is reported at once, each against the file in the extends
chain that actually set the offending key::

    invalid device profile cart-v2.toml (2 problems)
      - cart-v2.toml: device.memory_budget_mib: Input should be greater than or equal to 16
      - jetson-orin-base.toml: backend.precison: unknown key (allowed: prefer, precisions, ...)

Loading is strict: TOML is typed, so ``port = "1883"`` is an error, not a
silent conversion, and infinities/NaN are rejected for every float.
"""

from edge_runtime.profile.loader import (
    DEFAULT_PROFILE,
    PROFILE_SUFFIX,
    PROFILES_ENV,
    list_profiles,
    load_profile,
    merge_chain,
    profile_search_dirs,
    resolve_profile_path,
)
from edge_runtime.profile.problems import Provenance
from edge_runtime.profile.schema import (
    EXTENDS_KEY,
    Backend,
    BackendName,
    Box,
    Camera,
    Device,
    DeviceProfile,
    HeadFit,
    Health,
    InputSize,
    Metrics,
    Mqtt,
    Outbox,
    Precision,
    Readiness,
    Regions,
    Routing,
    Sampler,
    Security,
    Train,
)

__all__ = [
    "DEFAULT_PROFILE",
    "EXTENDS_KEY",
    "PROFILES_ENV",
    "PROFILE_SUFFIX",
    "Backend",
    "BackendName",
    "Box",
    "Camera",
    "Device",
    "DeviceProfile",
    "HeadFit",
    "Health",
    "InputSize",
    "Metrics",
    "Mqtt",
    "Outbox",
    "Precision",
    "Provenance",
    "Readiness",
    "Regions",
    "Routing",
    "Sampler",
    "Security",
    "Train",
    "list_profiles",
    "load_profile",
    "merge_chain",
    "profile_search_dirs",
    "resolve_profile_path",
]
