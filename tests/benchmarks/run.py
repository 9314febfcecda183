"""`make bench`: run the benchmarks and print one JSON document on stdout.

Sections are modules beside this file exposing ``run(quick: bool) -> dict``; progress goes
to stderr so stdout stays one JSON document. ``--only a,b`` picks sections, ``--quick``
takes fewer samples.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("BCL_DATA_DIR", str(HERE.parent.parent / ".bitcoinlib"))

SECTIONS = ["primitives", "protocol", "chains", "node", "wallet", "bridge", "withdrawals"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in args.only.split(","):
        path = HERE / f"bench_{name}.py"
        if not path.exists():
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"bench_{name}")
        params = inspect.signature(module.run).parameters
        result[name] = module.run(quick=args.quick) if "quick" in params else module.run()
        print(f"[bench] {name} done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    json.dump(result, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    main()
