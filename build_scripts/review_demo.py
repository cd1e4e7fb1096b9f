"""The whole unknown-object loop on the demo catalogue (``make review-demo``).

1. edge-build a bundle of the demo catalogue (a quick profile: fp32, input 160, no fine-tuning);
2. a throwaway mosquitto; ``edge-review serve`` (SQLite, crops, the page) on it;
3. edge-run on photos of two products the demo catalogue does not have (and two it has): their unknown/verify
   crops reach the collector, which groups them;
4. a reviewer (the script, through the page's own login and form; ``--interactive`` leaves it to you in a
   browser) labels the largest group as a new product; feedback goes to the device;
5. ``edge-review export``, then edge-build with ``--catalogue demo --catalogue delta/catalogue.csv --history``;
6. the new bundle on photos of the new product nobody reviewed: how many it now names.

    python build_scripts/review_demo.py [--out out/review-demo] [--interactive] [--screenshot docs/review-page.png]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import secrets
import shutil
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from build_scripts.demo_run import find_mosquitto, local_broker
from edge_runtime.builder.inputs import default_cache_dir
from edge_runtime.bundle import load_bundle
from edge_runtime.cli import build_main
from edge_runtime.demo import generate_demo_catalogue
from edge_runtime.features import head_input
from edge_runtime.head.model import load_head
from edge_runtime.preprocess import prepare, read_image
from edge_runtime.review.auth import add_reviewer
from edge_runtime.review.collector import BrokerOptions
from edge_runtime.review.service import ServeOptions, export, start_server
from edge_runtime.review.store import ReviewStore
from edge_runtime.run.pipeline import RunOptions, run
from edge_runtime.run.startup import bundle_profile, manifest_image_input, open_backend

REPO = Path(__file__).resolve().parents[1]
PROFILE = f"""extends = "{REPO / "device_profiles" / "dev-cpu.toml"}"
[device]
name = "review-demo"
[backend]
precisions = ["fp32"]
input_sizes = [160]
table_precisions = ["fp32"]
[train]
enabled = false
[metrics]
port = 0
"""
SEEN = 6  # photos of each new product the cart sees; the rest are kept for the check


def build(profile: Path, catalogues: list[Path], out: Path, history: Path | None = None) -> Path:
    args = ["--profile", str(profile), "--out", str(out), "--runs", "3", "-q"]
    for c in catalogues:
        args += ["--catalogue", str(c)]
    if history is not None:
        args += ["--history", str(history)]
    if build_main(args) != 0:
        sys.exit("edge-build failed")
    return out / "bundle"


def label_group(url: str, user: str, password: str, ids: list[str], code: str, name: str, group: str) -> None:
    """Log in and label ``ids`` as a new product through the page's own form, as a reviewer's browser would."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"user": user, "password": password, "next": "/"}).encode()
    page = opener.open(url + "/login", data=form, timeout=10).read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    if csrf is None:
        sys.exit("could not log in to the review page")
    body = {"csrf": csrf.group(1), "event_ids": ",".join(ids), "kind": "new", "sku": code, "name": name}
    opener.open(url + "/label", data=urllib.parse.urlencode({**body, "group": group}).encode(), timeout=10)


def pick_group(store: ReviewStore, products: list[str]) -> tuple[str, list[str]]:
    """What the reviewer's eyes do here: the largest group of one new product, and which of its crops show that
    product (the photo's file name says; a reviewer unticks the others)."""
    best: tuple[str, list[str]] = ("", [])
    for item in store.queue():
        for product in products:
            mine = [e.id for e in item.events if e.source_ref.startswith(product + "-")]
            if len(mine) > len(best[1]):
                best = (product, mine)
    return best


def screenshot(url: str, user: str, password: str, path: Path) -> None:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        print("screenshot skipped: selenium is not installed (pip install .[dev])")
        return
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        print("screenshot skipped: chromedriver not installed (make sysdeps)")
        return
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(url + "/login")
        driver.find_element(By.ID, "user").send_keys(user)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "login-button").click()
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
        print(f"screenshot of the review page: {path}")
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description="The unknown-object loop on the demo catalogue.")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "review-demo")
    parser.add_argument("--interactive", action="store_true", help="label in your browser instead of the script")
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the queue (needs chromium + selenium)")
    parser.add_argument("--reuse-bundle", action="store_true", help="keep OUT/v1/bundle from an earlier run")
    args = parser.parse_args()
    binary = find_mosquitto()
    if binary is None:
        sys.exit("review-demo needs mosquitto (make sysdeps)")
    out = args.out
    keep = out / "v1"
    reuse = args.reuse_bundle and (keep / "bundle" / "manifest.json").is_file()
    if out.exists():
        for child in out.iterdir():
            if not (reuse and child == keep):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    cache = default_cache_dir()
    catalogue = generate_demo_catalogue(cache / "demo-catalogue", unknown_dir=cache / "demo-unknown")
    new_products = sorted(p for p in (cache / "demo-unknown").iterdir() if p.is_dir())[:2]
    (out / "profile.toml").write_text(PROFILE)
    t0 = time.perf_counter()
    v1 = keep / "bundle" if reuse else build(out / "profile.toml", [catalogue], keep)
    print(f"1. bundle v1 of the demo catalogue: {v1} ({time.perf_counter() - t0:.0f} s)")
    photos = out / "photos"
    photos.mkdir()
    for product in new_products:
        for f in sorted(product.glob("*.jpg"))[:SEEN]:
            shutil.copyfile(f, photos / f"{product.name}-{f.name}")
    for f in sorted(catalogue.glob("*/*/*.jpg"))[:2]:
        shutil.copyfile(f, photos / f"known-{f.parent.name}-{f.name}")
    password = secrets.token_urlsafe(12)
    add_reviewer(out / "reviewers", "demo", password)
    with local_broker(binary) as port:
        broker = BrokerOptions(host="127.0.0.1", port=port, name="demo")
        opts = ServeOptions(db=f"sqlite:///{out / 'review.db'}", data=out / "data", reviewers=out / "reviewers",
                            bundle=v1, broker=broker, port=0)  # fmt: skip
        server = start_server(opts)
        try:
            server.collector.wait_connected(10)
            print(f"2. edge-review serve: page {server.url} (user demo, password {password})")
            summary = run(RunOptions(bundle=v1, source=str(photos), state_dir=out / "state", metrics_port=0,
                                     mqtt_host="127.0.0.1", mqtt_port=port, device_id="demo-cart",
                                     handle_signals=False))  # fmt: skip
            deadline = time.monotonic() + 30
            while server.store.stats()["events"] < sum(summary.routes.get(r, 0) for r in ("unknown", "verify")):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            stats = server.store.stats()
            print(f"3. edge-run on {len(list(photos.iterdir()))} photos: routes {summary.routes}; the collector "
                  f"stored {stats['events']} events in {stats['groups']} groups")  # fmt: skip
            if args.screenshot:
                screenshot(server.url, "demo", password, args.screenshot)
            if args.interactive:
                print(f"   label a group as a new product in {server.url}, then press Enter here")
                input()
            else:
                product, ids = pick_group(server.store, [p.name for p in new_products])
                if not ids:
                    sys.exit("no crop of a new product reached the review queue")
                code, name = f"{product}-new", product.replace("-", " ").title()
                label_group(server.url, "demo", password, ids, code, name, "New")
                print(f"4. labelled {len(ids)} crops of {product} (its largest group) as the new product {code}")
            server.feedback.flush(10)
        finally:
            server.stop()
    result = export(f"sqlite:///{out / 'review.db'}", out / "data", out / "delta")
    print(f"5. export: {result.images} crops of {result.skus} SKUs, new: {', '.join(result.new_skus) or 'none'}")
    if not result.new_skus:
        return 0
    history = out / "delta" / "history.csv"
    v2 = build(out / "profile.toml", [catalogue, out / "delta" / "catalogue.csv"], out / "v2", history)
    bundle = load_bundle(v2)
    head = load_head(bundle)
    backend = open_backend(bundle, bundle_profile(bundle))
    size = (manifest_image_input(bundle.manifest) or ("image", 224))[1]
    for product in new_products:
        unseen = [read_image(str(f)) for f in sorted(product.glob("*.jpg"))[SEEN:]]
        batch = np.stack([prepare(img, size) for img in unseen if img is not None])
        emb = backend.embed(batch)
        if head.config.colour_weight:
            emb = head_input(emb, batch, head.config.colour_weight)
        top1 = [d.top_k[0][0] for d in head.decide(emb)]
        print(f"6. bundle v2 on {len(top1)} unreviewed photos of {product.name}: top-1 {top1}")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
