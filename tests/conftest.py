"""Shared test configuration.

`tests/` is deliberately not a package (bitcoinlib installs a top-level `tests`); pytest
runs with `--import-mode=importlib`, so test modules import the project as
`fusion_prime.*` and helpers from `tests/helpers` through this file's sys.path entry.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("BCL_DATA_DIR", str(ROOT / ".bitcoinlib"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

from fp_db_fixtures import bridge_db, db_url, engine_name, pg_cluster, pg_url  # noqa: E402, F401 - fixtures


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the contracts' gas figures (recorded with record_property) after the run; it lives
    here because with xdist only the root conftest runs in the controlling process."""
    rows = set()
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) != "call":
                continue
            for key, value in getattr(rep, "user_properties", []):
                if isinstance(key, str) and key.startswith("gas "):
                    rows.add((key, value))
    if rows:
        terminalreporter.section("contract gas")
        for key, value in sorted(rows):
            terminalreporter.write_line(f"{key}: {value}")
