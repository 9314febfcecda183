"""Shared test configuration.

`tests/` is deliberately not a package (bitcoinlib installs a top-level `tests`); pytest
runs with `--import-mode=importlib`, so test modules import the project as
`fusion_prime.*` and helpers from `tests/helpers` through this file's sys.path entry.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("BCL_DATA_DIR", str(ROOT / ".bitcoinlib"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
