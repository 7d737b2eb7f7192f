"""The engine tests share tests/engine_helpers.py (tiny configs) with tests/test_train_net.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
