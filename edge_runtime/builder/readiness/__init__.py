"""The readiness checklist: seven checks a catalogue and a device should pass before a bundle ships.

- ``checks``: the seven checks (class imbalance, near-duplicate classes, catalogue change rate, memory headroom,
  OOD detection, per-class accuracy spread, calibration), each a pure function returning a ``Check``, and the
  warn rule they share;
- ``history``: the catalogue's change history (a CSV, or the previous bundle's manifest);
- ``scale``: the scale curve towards the profile's planned catalogue size;
- ``run``: ``run_readiness`` (all of it on what the build or edge-check computed, with a combined warning when
  several checks are marginal at once), ``ReadinessReport`` and ``write_report``;
- ``report``: the report for people (markdown, PNG plots, edge-check's summary). matplotlib is imported only
  inside its plotting functions, so a device install without it imports this package at no cost.

The names below are the package's public API (they were one module, ``builder/readiness.py``, before).
"""

from edge_runtime.builder.readiness.checks import (
    CHECK_IDS,
    DETAIL_NAMES,
    EVIDENCE_PAIRS,
    MAX_EXACT_PAIRS,
    PAIR_BLOCK_VALUES,
    WARN_MARGIN,
    Check,
    Status,
    centroid_pairs,
    check_accuracy_spread,
    check_calibration,
    check_change_rate,
    check_headroom,
    check_imbalance,
    check_near_duplicates,
    check_ood_detection,
)
from edge_runtime.builder.readiness.history import (
    CHANGE_KINDS,
    DAYS_PER_MONTH,
    ChangeHistory,
    history_from_manifest,
    read_history,
)
from edge_runtime.builder.readiness.run import (
    MIB,
    SCHEMA,
    ReadinessReport,
    combined_warning,
    run_readiness,
    write_report,
)
from edge_runtime.builder.readiness.scale import (
    MIN_SCALE_CLASSES,
    SCALE_FOLDS,
    SCALE_FRACTIONS,
    SCALE_HOLDOUT,
    SCALE_REPEATS,
    compute_scale_curve,
)

__all__ = [
    "CHANGE_KINDS",
    "CHECK_IDS",
    "DAYS_PER_MONTH",
    "DETAIL_NAMES",
    "EVIDENCE_PAIRS",
    "MAX_EXACT_PAIRS",
    "MIB",
    "MIN_SCALE_CLASSES",
    "PAIR_BLOCK_VALUES",
    "SCALE_FOLDS",
    "SCALE_FRACTIONS",
    "SCALE_HOLDOUT",
    "SCALE_REPEATS",
    "SCHEMA",
    "WARN_MARGIN",
    "ChangeHistory",
    "Check",
    "ReadinessReport",
    "Status",
    "centroid_pairs",
    "check_accuracy_spread",
    "check_calibration",
    "check_change_rate",
    "check_headroom",
    "check_imbalance",
    "check_near_duplicates",
    "check_ood_detection",
    "combined_warning",
    "compute_scale_curve",
    "history_from_manifest",
    "read_history",
    "run_readiness",
    "write_report",
]
