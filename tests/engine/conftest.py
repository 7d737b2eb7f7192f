"""Engine tests import tests/engine_helpers.py (tiny configs), shared with the top-level tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
