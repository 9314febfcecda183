"""`make bench`: run the benchmarks and print one JSON document on stdout.

Sections are modules beside this file exposing ``run(quick: bool) -> dict``; progress goes
to stderr so stdout stays one JSON document. ``--only a,b`` picks sections, ``--quick``
takes fewer samples.

Nothing finished is lost when a long run is stopped: each section's figures go to stderr as
soon as it ends, and the document so far is rewritten after every section to ``--partial``
(default ``var/bench/latest.json``). A section that fails is recorded with its error and the
run goes on to the next.
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

SECTIONS = ["primitives", "protocol", "chains", "node", "wallet", "bridge", "withdrawals", "settlement"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--partial", default=str(HERE.parent.parent / "var" / "bench" / "latest.json"),
                        help="rewrite the results so far here after every section")
    args = parser.parse_args()
    partial = Path(args.partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
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
        try:
            module = importlib.import_module(f"bench_{name}")
            params = inspect.signature(module.run).parameters
            result[name] = module.run(quick=args.quick) if "quick" in params else module.run()
        except KeyboardInterrupt:
            result[name] = {"error": "interrupted"}
            partial.write_text(json.dumps(result, indent=2, default=str) + "\n")
            raise
        except Exception as exc:  # one broken section must not lose the others' figures
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[bench] {name} done in {time.perf_counter() - start:.1f}s: "
              f"{json.dumps(result[name], default=str)}", file=sys.stderr, flush=True)
        partial.write_text(json.dumps(result, indent=2, default=str) + "\n")
    json.dump(result, sys.stdout, indent=2, default=str)
    print()


if __name__ == "__main__":
    main()
