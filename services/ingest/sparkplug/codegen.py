"""Generate the Python protobuf module of our ``sparkplug_b.proto`` (the Sparkplug B schema).

``python -m services.ingest.sparkplug.codegen`` rewrites ``sparkplug_b_pb2.py`` and its type
stub ``sparkplug_b_pb2.pyi`` next to the .proto; ``--check`` only reports whether the
committed files are what the .proto produces with the protoc of ``grpcio-tools`` installed.
Both need the ``dev`` extra (grpcio-tools); the ingest service itself only needs ``protobuf``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from carbonflow.errors import CarbonFlowError

HERE = Path(__file__).resolve().parent
PROTO = HERE / "sparkplug_b.proto"
GENERATED = ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi")


class CodegenError(CarbonFlowError):
    """protoc refused the .proto file."""


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the .proto into ``out_dir``; return the generated files."""
    from grpc_tools import protoc  # dev extra only

    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO.parent}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(PROTO),
        ]
    )
    if code != 0:
        raise CodegenError(f"protoc failed on {PROTO.name} (exit code {code})")
    return [out_dir / name for name in GENERATED]


def stale_files() -> list[str]:
    """Names of committed generated files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="sparkplug-codegen-") as tmp:
        fresh = generate(Path(tmp))
        return [
            path.name
            for path in fresh
            if not (HERE / path.name).exists()
            or (HERE / path.name).read_bytes() != path.read_bytes()
        ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        for name in stale:
            print(
                f"stale: {name} (run python -m services.ingest.sparkplug.codegen)", file=sys.stderr
            )
        return 1 if stale else 0
    generate(HERE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
