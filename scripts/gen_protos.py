"""Regenerate the Python gRPC code in chargpt/v1 from protos/ (run with --check to verify it is current)."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_DIR = ROOT / "chargpt" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> None:
    """Run protoc (from grpcio-tools) on every .proto under protos/ into out_root."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "chargpt" / "v1"
        names = generated_files(fresh)
        if args.check:
            stale = [n for n in names if not (OUT_DIR / n).exists() or not filecmp.cmp(fresh / n, OUT_DIR / n)]
            stale += [n for n in generated_files(OUT_DIR) if n not in names]
            if stale:
                print(f"generated code is stale: {stale}; run `python scripts/gen_protos.py`", file=sys.stderr)
                return 1
            print(f"generated code is current ({len(names)} files)")
            return 0
        for name in generated_files(OUT_DIR):
            (OUT_DIR / name).unlink()
        for name in names:
            shutil.copyfile(fresh / name, OUT_DIR / name)
        print(f"wrote {len(names)} files to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
