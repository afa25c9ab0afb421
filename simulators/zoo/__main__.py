"""``python -m simulators.zoo DIR``: write every model of the zoo under ``DIR``.

Writes ``DIR/<plant>/<variant>.onnx`` and ``DIR/manifest.json`` (see
:func:`simulators.zoo.policies.write_zoo`) and prints one line per model: its path relative to
``DIR`` and its sha256. The bytes are the same on every run, so the hashes can be pinned.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from simulators.zoo.policies import write_zoo


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0)."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators.zoo",
        description="Write the model zoo (good and compromised ONNX policies) to DIR.")
    parser.add_argument("directory", type=Path, metavar="DIR",
                        help="where to write <plant>/<variant>.onnx and manifest.json")
    args = parser.parse_args(argv)
    directory: Path = args.directory
    hashes = write_zoo(directory)
    try:
        for plant, variants in hashes.items():
            for variant, digest in variants.items():
                print(f"{plant}/{variant}.onnx  {digest}", flush=True)
    except BrokenPipeError:  # `... | head`: the reader chose to stop; the zoo is written
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # no final flush to a dead pipe
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
