"""Scenes on their scenario videos, through the real bundle: cart events, contents, track vs frame, cost, uplink.

    python benchmarks/scene_eval.py [--bundle DIR] [--sessions N] [--seed N] [--no-grocery] [--no-shelf]

Cart sessions come from ``edge_runtime.demo.cart_scenes`` (products carried into a basket by a hand and out
again, two at once, lighting changes, idle stretches; never-seen demo packages and, where
``../shared/data/grocery`` is present, its iconic photos as new products). Every frame goes through the
pieces edge-run runs: the learned-basket proposals, ``prepare_batch``, the bundle's backend, colour descriptor
and head, then ``CartScene``. Printed:

- event precision and recall: a truth ``added``/``removed`` is found by a predicted event of the same type
  within ``WINDOW_S`` and with the right SKU (a new product: no SKU); overall and for known products; and
  ``detected``: the same without the SKU (the scene's own part: proposals, tracking, settle and gone rules);
- contents exact: sessions whose final contents (SKU counts, unknown counted apart) equal the truth;
- the track-vs-frame table over the added objects: the track's fused decision against its best single frame
  (the observation the head was most confident about): top-1 on known products, new-product detection (route
  unknown) on new ones, and the precision and share of auto-accept;
- scene cost per frame (proposals + tracking + track decisions, without the backbone) on one OpenCV thread,
  the fastest of five replays of one session per frame (the machine is shared);
- the uplink: a session's messages (events with their crops, the retained cart, heartbeats every 30 s)
  replayed at their capture times through the publisher's token bucket at cart-v2's cap, with the most
  bytes ever waiting (the outbox stays flat when that stays within a second of the cap);
- the shelf engineer's slot-state figures (``benchmarks/scene_shelf.evaluate_shelf``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from _common import GROCERY, REPO, demo_bundle, machine_line

from edge_runtime.bundle import load_bundle
from edge_runtime.demo.cart_scenes import CartScenario, cart_scenario, grocery_appearances
from edge_runtime.features import colour_descriptor, compose
from edge_runtime.head.model import load_head
from edge_runtime.preprocess import prepare_batch
from edge_runtime.profile import load_profile
from edge_runtime.profile.scene import CartConfig
from edge_runtime.run.messages import encode_json
from edge_runtime.run.regions import crop
from edge_runtime.run.scene.cart import CartScene, SceneEvent
from edge_runtime.run.scene.evidence import Evidence
from edge_runtime.run.scene.messages import cart_message, event_message
from edge_runtime.run.scene.proposals import BasketProposals
from edge_runtime.run.startup import bundle_profile, open_checked_backend
from edge_runtime.run.uplink import TokenBucket
from edge_runtime.types import Decision

WINDOW_S = 2.5  # a predicted event this close after (or 0.5 s before) the truth's frame finds it
HEARTBEAT_BYTES = 900  # assumed, not measured: a demo heartbeat is 1-1.5 KB; at one per 30 s the gap is < 20 B/s
HEARTBEAT_S = 30.0


@dataclass
class SessionResult:
    scenario: CartScenario
    events: list[SceneEvent]
    contents: dict[str, Any]
    tracks: dict[int, Evidence]
    messages: list[tuple[float, str, int]] = field(default_factory=list)  # (time in session, topic, bytes)


class _Recogniser:
    """The bundle as edge-run runs it: its backend choice, input size, colour descriptor and head."""

    def __init__(self, bundle_dir: Path, stack: contextlib.ExitStack) -> None:
        self.bundle = load_bundle(bundle_dir)
        profile = bundle_profile(self.bundle)
        self.head = load_head(self.bundle)
        self.skus = {s.code for s in self.head.skus}
        state = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        self.backend, self.size = open_checked_backend(self.bundle, profile, self.head, state, stack)
        self.colour = self.head.config.colour_weight
        self.mqtt = profile.mqtt

    def features(self, views: list[np.ndarray]) -> tuple[np.ndarray, list[Decision]]:
        batch = prepare_batch(views, self.size)
        colour = colour_descriptor(batch) if self.colour > 0 else None
        feats = compose(self.backend.embed(batch), colour, self.colour)
        return feats, self.head.decide(feats)

    def decide(self, fused: np.ndarray) -> Decision:
        return self.head.decide(fused[None, :])[0]


def run_session(rec: _Recogniser, scenario: CartScenario, config: CartConfig) -> SessionResult:
    """One scenario through proposals, the bundle and the cart scene; times and messages recorded."""
    proposals = BasketProposals(config)
    scene = CartScene(config, rec.decide, (640, 480))
    result = SessionResult(scenario, [], {}, {})
    contents_before: tuple[Any, ...] = ({}, None)
    for i, frame in enumerate(scenario.frames()):
        ts = i / scenario.fps
        regions = proposals.find(frame)
        views = [crop(frame, r) for r in regions]
        feats, decisions = rec.features(views) if views else (None, [])
        events = scene.update(i, ts, regions, decisions, feats, views)
        result.events += events
        _record(rec, scene, events, ts, i, result, contents_before)
        contents_before = (scene.contents(), scene.session_id)
    result.contents = scene.contents()
    final = scene.finish(scenario.n_frames / scenario.fps, scenario.n_frames - 1)
    result.events += final
    result.tracks = dict(scene.ended)
    return result


def _record(
    rec: _Recogniser,
    scene: CartScene,
    events: list[SceneEvent],
    ts: float,
    frame_id: int,
    result: SessionResult,
    before: tuple[Any, ...],
) -> None:
    """The bytes edge-run would send for these events (topic + payload, as the uplink counts them)."""
    for e in events:
        message = event_message(
            e, device_id="cart-0", crop_max_side=rec.mqtt.crop_max_side, jpeg_quality=rec.mqtt.jpeg_quality,
            with_crop=True,
        )  # fmt: skip
        result.messages.append((ts, "events", len(encode_json(message)) + len("edge/cart-0/events")))
    if (scene.contents(), scene.session_id) != before:
        msg = cart_message(scene.contents(), device_id="cart-0", session_id=scene.session_id, ts=ts, frame_id=frame_id)
        result.messages.append((ts, "cart", len(encode_json(msg)) + len("edge/cart-0/cart")))


def scene_cost(rec: _Recogniser, scenario: CartScenario, config: CartConfig, repeats: int = 5) -> dict[str, np.ndarray]:
    """Milliseconds per frame of the scene alone (proposals; tracking and track decisions), replayed ``repeats``
    times over recorded head outputs; per frame the fastest replay (the machine is shared: the rest is noise).
    Frames before the basket is learned are left out."""
    frames = list(scenario.frames())
    inputs: list[tuple[list[Any], Any, list[Decision]]] = []
    proposals = BasketProposals(config)
    for frame in frames:
        regions = proposals.find(frame)
        views = [crop(frame, r) for r in regions]
        feats, decisions = rec.features(views) if views else (None, [])
        inputs.append((regions, feats, decisions))
    best_p = np.full(len(frames), np.inf)
    best_s = np.full(len(frames), np.inf)
    for _ in range(repeats):
        proposals = BasketProposals(config)
        scene = CartScene(config, rec.decide, (640, 480))
        for i, frame in enumerate(frames):
            regions, feats, decisions = inputs[i]
            t0 = time.perf_counter()
            proposals.find(frame)
            t1 = time.perf_counter()
            scene.update(i, i / scenario.fps, regions, decisions, feats, [crop(frame, r) for r in regions])
            t2 = time.perf_counter()
            best_p[i] = min(best_p[i], t1 - t0)
            best_s[i] = min(best_s[i], t2 - t0)
    skip = config.learn_frames
    return {"proposals": best_p[skip:] * 1000, "scene in all": best_s[skip:] * 1000}


# --------------------------------------------------------------------------- scoring


def _truth_sku(sku: str, known: set[str]) -> str | None:
    return sku if sku in known else None


def score_events(results: list[SessionResult], known: set[str]) -> dict[str, float]:
    """Event precision/recall (type, window, SKU), overall and for known products; contents exact."""
    tp = fp = fn = 0
    tp_k = fp_k = fn_k = 0
    found = predicted_total = 0  # the scene's own part: type and window, whatever SKU the head named
    exact = 0
    for r in results:
        fps = r.scenario.fps
        predicted = [e for e in r.events if e.type in ("added", "removed")]
        predicted_total += len(predicted)
        seen: set[int] = set()
        for gt in r.scenario.events:
            j = next(
                (j for j, e in enumerate(predicted) if j not in seen and e.type == gt.type
                 and gt.frame - 0.5 * fps <= e.frame_id <= gt.frame + WINDOW_S * fps),
                None,
            )  # fmt: skip
            if j is not None:
                seen.add(j)
                found += 1
        used: set[int] = set()
        for gt in r.scenario.events:
            want = _truth_sku(gt.sku, known)
            hit = None
            for j, e in enumerate(predicted):
                if j in used or e.type != gt.type:
                    continue
                if not gt.frame - 0.5 * fps <= e.frame_id <= gt.frame + WINDOW_S * fps:
                    continue
                if e.decision is not None and e.decision.sku == want:
                    hit = j
                    break
            if hit is None:
                fn += 1
                fn_k += want is not None
            else:
                used.add(hit)
                tp += 1
                tp_k += want is not None
        wrong = [e for j, e in enumerate(predicted) if j not in used]
        fp += len(wrong)
        fp_k += sum(1 for e in wrong if e.decision is not None and e.decision.sku is not None)
        truth = Counter({k: v for k, v in r.scenario.contents.items() if k in known})
        unknown = sum(v for k, v in r.scenario.contents.items() if k not in known)
        got = Counter({row["sku"]: row["count"] for row in r.contents["items"]})
        exact += got == truth and r.contents["unknown"] == unknown
    truth_total = sum(len(r.scenario.events) for r in results)
    return {
        "detected_precision": found / max(1, predicted_total),
        "detected_recall": found / max(1, truth_total),
        "event_precision": tp / max(1, tp + fp),
        "event_recall": tp / max(1, tp + fn),
        "event_precision_known": tp_k / max(1, tp_k + fp_k),
        "event_recall_known": tp_k / max(1, tp_k + fn_k),
        "contents_exact": exact / max(1, len(results)),
        "events_truth": float(sum(len(r.scenario.events) for r in results)),
    }


def track_vs_frame(results: list[SessionResult], known: set[str]) -> dict[str, dict[str, float]]:
    """For every added object matched to a truth add (type and window), its track's final decision against its
    best single frame."""
    rows: dict[str, list[tuple[Decision, Decision, str]]] = {"track": [], "frame": []}
    for r in results:
        fps = r.scenario.fps
        adds = [e for e in r.events if e.type == "added"]
        for gt in (g for g in r.scenario.events if g.type == "added"):
            match = next((e for e in adds if gt.frame - 0.5 * fps <= e.frame_id <= gt.frame + WINDOW_S * fps), None)
            if match is None or match.track_id not in r.tracks:
                continue
            adds.remove(match)
            ev = r.tracks[match.track_id]
            if ev.decision is None or ev.best_single is None:
                continue
            rows["track"].append((ev.decision, ev.decision, gt.sku))
            rows["frame"].append((ev.best_single, ev.best_single, gt.sku))
    out: dict[str, dict[str, float]] = {}
    for name, items in rows.items():
        known_rows = [(d, s) for d, _, s in items if s in known]
        new_rows = [(d, s) for d, _, s in items if s not in known]
        accepted = [(d, s) for d, _, s in items if d.route == "accept"]
        out[name] = {
            "objects": float(len(items)),
            "top1_known": sum(d.top_k[0][0] == s for d, s in known_rows) / max(1, len(known_rows)),
            "new_detected": sum(d.route == "unknown" for d, _ in new_rows) / max(1, len(new_rows)),
            "new_objects": float(len(new_rows)),
            "accept_precision": sum(d.sku == s for d, s in accepted) / max(1, len(accepted)),
            "accept_share": len(accepted) / max(1, len(items)),
        }
    return out


class _Clock:
    """The replay's time: the bucket reads it, the replay sets it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def uplink_replay(results: list[SessionResult], cap: int) -> dict[str, float]:
    """Each session's messages (plus heartbeats) at their capture times through the token bucket at ``cap``:
    mean bytes/s and the most bytes ever waiting behind the bucket."""
    worst_backlog, rates, peak_second = 0.0, [], 0.0
    for r in results:
        duration = r.scenario.n_frames / r.scenario.fps
        msgs = [(t, b) for t, _topic, b in r.messages]
        msgs += [(k * HEARTBEAT_S, HEARTBEAT_BYTES) for k in range(int(duration // HEARTBEAT_S) + 1)]
        msgs.sort()
        clock = _Clock()
        bucket = TokenBucket(cap, cap, clock=clock)
        sent_until = 0.0
        for t, size in msgs:
            clock.now = max(t, sent_until)
            clock.now += bucket.wait_s(size)
            bucket.take(size)
            sent_until = clock.now
            worst_backlog = max(worst_backlog, (sent_until - t) * cap)
        rates.append(sum(b for _, b in msgs) / duration)
        per_second = Counter(int(t) for t, _ in msgs)
        peak_second = max(peak_second, max((sum(b for t, b in msgs if int(t) == s) for s in per_second), default=0))
    return {
        "mean_bytes_per_s": statistics.mean(rates),
        "max_bytes_per_s": max(rates),
        "busiest_second_bytes": peak_second,
        "most_bytes_waiting": worst_backlog,
    }


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle (default: out/demo/bundle)")
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--actions", type=int, default=5, help="adds and removals per session")
    parser.add_argument("--no-grocery", action="store_true", help="no grocery photos as new products")
    parser.add_argument("--no-shelf", action="store_true", help="skip the shelf scenarios")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # the scene's cost is quoted on one core
    bundle_dir = demo_bundle(args.bundle)
    print(machine_line())
    print(f"bundle: {bundle_dir}")
    grocery = None if args.no_grocery or not GROCERY.is_dir() else grocery_appearances(GROCERY)
    print(f"new products: never-seen demo packages{' + grocery iconic photos' if grocery else ''}")
    config = load_profile("cart-v2").scene.cart
    cap = load_profile("cart-v2").mqtt.uplink_bytes_per_s
    results = []
    with contextlib.ExitStack() as stack:
        rec = _Recogniser(bundle_dir, stack)
        t0 = time.time()
        for k in range(args.sessions):
            scenario = cart_scenario(args.seed * 1000 + k, grocery, actions=args.actions)
            results.append(run_session(rec, scenario, config))
            print(f"  {scenario.name}: {scenario.n_frames} frames, {len(scenario.events)} truth events, "
                  f"features {', '.join(scenario.features)}", flush=True)  # fmt: skip
        print(f"{args.sessions} sessions in {time.time() - t0:.0f} s")
    ev = score_events(results, rec.skus)
    print("\ncart events (type, window, SKU right):")
    keys = ("detected_precision", "detected_recall", "event_precision", "event_recall")
    for key in (*keys, "event_precision_known", "event_recall_known", "contents_exact"):
        print(f"  {key:24s} {ev[key]:.3f}")
    print(f"  truth events            {ev['events_truth']:.0f}")
    table = track_vs_frame(results, rec.skus)
    print("\ntrack vs best single frame (added objects):")
    header = ("objects", "top1 known", "new detected", "accept prec", "accept share")
    print(f"  {'':8s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header, (8, 11, 13, 12, 13), strict=True)))
    for name, row in table.items():
        new = f"{row['new_detected']:9.3f} ({row['new_objects']:.0f})"
        print(
            f"  {name:8s} {row['objects']:8.0f} {row['top1_known']:11.3f} {new:>13s}"
            f" {row['accept_precision']:12.3f} {row['accept_share']:13.3f}"
        )
    with contextlib.ExitStack() as stack:
        rec = _Recogniser(bundle_dir, stack)
        cost = scene_cost(rec, results[0].scenario, config)
    print(f"\nscene cost per frame at 640x480 on one core ({results[0].scenario.name}, fastest of 5 replays), ms:")
    for key, values in cost.items():
        print(f"  {key:16s} p50 {np.median(values):.3f}  p95 {np.percentile(values, 95):.3f}  mean {values.mean():.3f}")
    up = uplink_replay(results, cap)
    print(f"\nuplink at cart-v2's cap of {cap} B/s (events with crops, retained cart, heartbeats):")
    print(f"  mean {up['mean_bytes_per_s']:.0f} B/s, largest session mean {up['max_bytes_per_s']:.0f} B/s")
    print(f"  busiest second {up['busiest_second_bytes']:.0f} B, most bytes waiting {up['most_bytes_waiting']:.0f} B")
    if not args.no_shelf:
        sys.path.insert(0, str(REPO / "benchmarks"))
        try:
            from scene_shelf import evaluate_shelf
        except ImportError as exc:
            print(f"\nshelf: not measured ({exc})")
        else:
            with tempfile.TemporaryDirectory() as out:
                shelf = evaluate_shelf(bundle_dir, Path(out), args.seed)
            print("\nshelf (benchmarks/scene_shelf.py):")
            for key, value in shelf.items():
                print(f"  {key:28s} {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
