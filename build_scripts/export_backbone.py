"""Write the default ONNX backbone (EfficientNet-Lite0) built from the installed pretrained checkpoint."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

# Lets the script run from a plain checkout, where edge_runtime is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.builder.backbone import export_default_backbone
from edge_runtime.errors import EdgeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="where to write the .onnx file")
    parser.add_argument("--input-size", type=int, default=224, help="square input side in pixels (default 224)")
    args = parser.parse_args(argv)
    try:
        path = export_default_backbone(args.out, args.input_size)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    print(f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
