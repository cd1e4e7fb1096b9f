"""The recognition head applied at run time: project, match prototypes, calibrate, gate, route (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.bundle import HEAD, LABELS, PROTOTYPES, Bundle
from edge_runtime.errors import BundleError
from edge_runtime.features import COLOUR_BINS
from edge_runtime.head.calibration import NEVER
from edge_runtime.head.ood import OodModel
from edge_runtime.head.projection import Projection
from edge_runtime.head.prototypes import PrototypeTable
from edge_runtime.head.routing import GROUP_AMBIGUITY_RATIO, route
from edge_runtime.types import Decision, SkuInfo

HEAD_SCHEMA = "edge.head/1"
# Above this many SKUs the search goes group first: fewer rows scored per region.
HIERARCHICAL_MIN_SKUS = 5000


@dataclass(frozen=True)
class HeadConfig:
    temperature: float
    ood_method: str
    ood_threshold: float
    accept_thresholds: np.ndarray  # [K]
    threshold_levels: list[str]  # [K] "class" | "group" | "global"
    verify_band: float
    # An accepted region must also be this far inside the gate: new products pass the gate as look-alikes of a
    # known SKU, and no class threshold knows which SKU the next one will resemble. None = the gate itself.
    accept_ood_threshold: float | None = None
    top_k: int = 5
    search: str = "flat"  # "flat" | "hierarchical"
    top_groups: int = 3
    # Weight of the colour descriptor appended to every embedding (edge_runtime.features); 0 = embedding only.
    colour_weight: float = 0.0


@dataclass
class Head:
    skus: list[SkuInfo]
    projection: Projection
    table: PrototypeTable  # one row per SKU, in projected space
    group_of_class: np.ndarray  # [K] int, index into group_names
    group_names: list[str]
    group_table: PrototypeTable  # one row per group
    ood: OodModel
    config: HeadConfig

    def __post_init__(self) -> None:
        self._members = [np.flatnonzero(self.group_of_class == g) for g in range(len(self.group_names))]

    @property
    def nbytes(self) -> int:
        return self.projection.nbytes + self.table.nbytes + self.group_table.nbytes + self.ood.nbytes

    def similarities(self, feats: np.ndarray) -> np.ndarray:
        """Cosine to every SKU prototype [N, K]; hierarchical search fills only the best groups' SKUs."""
        if self.config.search != "hierarchical":
            return self.table.scores(feats)
        out = np.full((len(feats), len(self.table)), -1.0, dtype=np.float32)
        group_sims = self.group_table.scores(feats)
        top = _best(group_sims, self.config.top_groups)
        for i, groups in enumerate(top):
            rows = np.concatenate([self._members[g] for g in groups])
            # Only the chosen groups' rows are converted: dequantising the whole table per region cost more than
            # the flat search it is meant to save (40 ms against 3 ms at 10k SKUs).
            out[i, rows] = self.table.dequantised_rows(rows) @ feats[i]
        return out

    def decide(self, embeddings: np.ndarray) -> list[Decision]:
        if len(embeddings) == 0:
            return []
        feats = self.projection.apply(embeddings)
        cos = self.similarities(feats)
        logits = cos / self.config.temperature
        logits -= logits.max(axis=1, keepdims=True)
        k = min(self.config.top_k, logits.shape[1])
        # Softmax is monotonic: the top-k by logit are the top-k by probability, found without sorting all K.
        top = _best(logits, k, ordered=True)
        weights = np.exp(logits, out=logits)  # in place: one [N, K] buffer, however large the catalogue
        # Probabilities only where they are read; each equals what dividing the whole row would give.
        probs = np.take_along_axis(weights, top, axis=1) / weights.sum(axis=1, keepdims=True)
        ood = self.ood.score(feats, cos, self.config.temperature)
        decisions = []
        for i in range(len(feats)):
            best = int(top[i, 0])
            p1 = float(probs[i, 0])
            ambiguous = False
            if k > 1:
                second = int(top[i, 1])
                ambiguous = bool(
                    self.group_of_class[second] != self.group_of_class[best]
                    and probs[i, 1] >= GROUP_AMBIGUITY_RATIO * p1
                )
            r, reasons = route(
                p1,
                float(self.config.accept_thresholds[best]),
                float(ood[i]),
                self.config.ood_threshold,
                self.config.verify_band,
                ambiguous,
                self.config.accept_ood_threshold,
            )
            sku = self.skus[best]
            known = r != "unknown"
            decisions.append(
                Decision(
                    sku=sku.code if known else None,
                    name=sku.name if known else None,
                    group=sku.group if known else None,
                    score=round(p1, 6),
                    ood_score=round(float(ood[i]), 6),
                    route=r,
                    reasons=reasons,
                    top_k=tuple(
                        (self.skus[int(j)].code, round(float(p), 6)) for j, p in zip(top[i], probs[i], strict=True)
                    ),
                )
            )
        return decisions

    # ---- persistence: arrays go to prototypes.npz, scalars and per-class values to head.json ----
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = self.table.to_arrays()
        arrays.update(self.projection.to_arrays())
        arrays.update({f"group_{k}": v for k, v in self.group_table.to_arrays().items()})
        arrays["group_of_class"] = self.group_of_class.astype(np.int32)
        arrays.update(self.ood.to_arrays())
        return arrays

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "schema": HEAD_SCHEMA,
            # A square matrix is not proof of no projection: an LDA over more SKUs than dimensions keeps them all.
            "kind": "prototypes" if self.projection.is_identity else "prototypes+lda",
            "table_precision": self.table.precision,
            "temperature": c.temperature,
            "ood": {"method": c.ood_method, "threshold": c.ood_threshold, "accept_threshold": c.accept_ood_threshold},
            "verify_band": c.verify_band,
            "top_k": c.top_k,
            "search": c.search,
            "top_groups": c.top_groups,
            "input": {"colour_weight": c.colour_weight, "colour_bins": list(COLOUR_BINS) if c.colour_weight else None},
            "groups": self.group_names,
            "accept_thresholds": [
                {"sku": s.code, "threshold": None if t >= NEVER else round(float(t), 6), "level": lvl}
                for s, t, lvl in zip(self.skus, c.accept_thresholds, c.threshold_levels, strict=True)
            ],
        }

    @classmethod
    def from_parts(cls, skus: list[SkuInfo], arrays: dict[str, np.ndarray], doc: dict[str, Any]) -> Head:
        """Rebuild from bundle members; raises ValueError/KeyError on inconsistent content."""
        if doc.get("schema") != HEAD_SCHEMA:
            raise ValueError(f"head.json schema {doc.get('schema')!r}, expected {HEAD_SCHEMA}")
        table = PrototypeTable.from_arrays(arrays)
        group_table = PrototypeTable.from_arrays(
            {k[len("group_") :]: v for k, v in arrays.items() if k.startswith("group_") and k != "group_of_class"}
        )
        if len(table) != len(skus):
            raise ValueError(f"prototype table has {len(table)} rows for {len(skus)} SKUs")
        thresholds = doc["accept_thresholds"]
        if [t["sku"] for t in thresholds] != [s.code for s in skus]:
            raise ValueError("accept thresholds do not list the same SKUs as labels.json")
        head_input = doc.get("input") or {}  # absent in bundles from before the colour descriptor
        colour_weight = float(head_input.get("colour_weight") or 0.0)
        if colour_weight > 0 and list(head_input.get("colour_bins") or []) != list(COLOUR_BINS):
            raise ValueError(
                f"the head reads a {head_input.get('colour_bins')} colour histogram; this edge_runtime computes "
                f"{list(COLOUR_BINS)}"
            )
        config = HeadConfig(
            temperature=float(doc["temperature"]),
            ood_method=str(doc["ood"]["method"]),
            ood_threshold=float(doc["ood"]["threshold"]),
            accept_ood_threshold=(
                None if doc["ood"].get("accept_threshold") is None else float(doc["ood"]["accept_threshold"])
            ),
            accept_thresholds=np.array(
                [NEVER if t["threshold"] is None else float(t["threshold"]) for t in thresholds]
            ),
            threshold_levels=[str(t["level"]) for t in thresholds],
            verify_band=float(doc["verify_band"]),
            top_k=int(doc["top_k"]),
            search=str(doc["search"]),
            top_groups=int(doc["top_groups"]),
            colour_weight=colour_weight,
        )
        return cls(
            skus=skus,
            projection=Projection.from_arrays(arrays),
            table=table,
            group_of_class=arrays["group_of_class"].astype(np.int64),
            group_names=list(doc["groups"]),
            group_table=group_table,
            ood=OodModel.from_arrays(config.ood_method, arrays),
            config=config,
        )


def _best(values: np.ndarray, k: int, ordered: bool = False) -> np.ndarray:
    """Column indices of the ``k`` largest values per row [N, k]; best first when ``ordered`` (ties: lower index)."""
    n_cols = values.shape[1]
    if k >= n_cols:
        part = np.broadcast_to(np.arange(n_cols), values.shape)
    else:
        # argpartition is linear in K where a full argsort per region cost 0.5 ms at 10k SKUs; but its introselect
        # slows down tenfold on many equal values, which is what a group-first search leaves (every row outside
        # the chosen groups holds the same fill value). So select among the values above the row's minimum when
        # they are few and enough.
        part = np.empty((values.shape[0], k), dtype=np.intp)
        for i, row in enumerate(values):
            above = np.flatnonzero(row > row.min())
            if k <= len(above) <= n_cols // 2:
                part[i] = above[np.argpartition(row[above], len(above) - k)[len(above) - k :]]
            else:
                part[i] = np.argpartition(row, n_cols - k)[n_cols - k :]
    if not ordered:
        return part
    order = np.lexsort((part, -np.take_along_axis(values, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def load_head(bundle: Bundle) -> Head:
    """The head stored in a verified bundle; inconsistent content is a BundleError naming the file."""
    try:
        labels = bundle.read_json(LABELS)
        skus = [SkuInfo(code=str(x["sku"]), name=str(x["name"]), group=str(x["group"])) for x in labels]
        return Head.from_parts(skus, bundle.read_arrays(PROTOTYPES), bundle.read_json(HEAD))
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise BundleError(
            f"{bundle.root}: head parameters are inconsistent ({type(exc).__name__}: {exc})",
            hint="rebuild the bundle with edge-build",
        ) from None
