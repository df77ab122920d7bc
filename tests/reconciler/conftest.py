"""tests/reconciler: the reconciler's steps driven on in-memory fakes (tests/reconciler/fakes.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # `from fakes import ...` in this folder's tests
