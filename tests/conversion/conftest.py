"""Conversion tests import their helpers (m2f_helpers.py) and tests/engine_helpers.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
