"""Write docs/robustness.md: run every robustness case and tabulate what edge_runtime did with it.

    make docs
    python build_scripts/write_robustness_doc.py [--out docs/robustness.md]

The cases are the ones ``tests/integration/test_robustness.py`` runs and asserts: malformed profiles, tampered
bundles, bad catalogues and models, bad camera URIs, bad command lines and bad MQTT feedback, against the real
command-line tools and a running edge-run (it needs mosquitto, as the tests do). This script runs that module with
pytest and renders the cases it recorded. The table is written once every area has run, also when a case did not
have its documented outcome (the row then says so); the exit status is pytest's, so a failing case fails
``make docs``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE = Path("tests") / "integration" / "test_robustness.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "robustness.md", help="where to write the table")
    args = parser.parse_args(argv)

    # Run from the checkout, so that ``tests`` and ``edge_runtime`` are the checkout's, as under ``make test``.
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    import pytest

    code = int(pytest.main(["-q", "-p", "no:cacheprovider", str(MODULE)]))
    from tests.integration import test_robustness as cases

    ran = {row.area for row in cases.ROWS}
    if ran != set(cases.AREAS):
        missing = ", ".join(area for area in cases.AREAS if area not in ran)
        print(f"write_robustness_doc: {args.out} not written: no cases ran for {missing}", file=sys.stderr)
        return code or 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(cases.render(cases.ROWS, cases.PLACES), encoding="utf-8")
    print(f"write_robustness_doc: {len(cases.ROWS)} cases written to {args.out}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
