"""``python -m mlship.serving [mlship.yaml]``: the server entry point used inside images."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mlship.contract_io import load_project
from mlship.errors import MlshipError
from mlship.serving.server import ServeConfig, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlship.serving")
    parser.add_argument("contract", nargs="?", type=Path, default=None)
    parser.add_argument("--host", default=os.environ.get("MLSHIP_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(load_project(args.contract), ServeConfig(host=args.host, port=args.port))
    except MlshipError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a stuck model thread must not keep the process alive after shutdown
