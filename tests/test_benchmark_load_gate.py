"""The benchmarks' load gate: a verdict against a target only when the 1-minute load average
says the machine was quiet (before the run <= the threads used; after it <= threads + 1, the
benchmark's own threads counted); otherwise the figures are marked as taken under load."""
import importlib.util

from engine_helpers import REPO


def _bench_model():
    spec = importlib.util.spec_from_file_location("bench_model",
                                                  REPO / "benchmarks" / "bench_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_verdict_only_on_a_quiet_machine():
    b = _bench_model()
    assert b.quiet(0.1, 2.4, 2) and not b.quiet(2.5, 2.4, 2) and not b.quiet(0.1, 3.5, 2)
    assert b.verdict("x / HF", 0.61, 0.7, 0.1, 2.0, 2).endswith("0.61x vs target <= 0.70x: PASS")
    assert b.verdict("x / HF", 0.75, 0.7, 0.1, 2.0, 2).endswith("FAIL")
    loaded = b.verdict("x / HF", 0.61, 0.7, 12.0, 12.0, 2)
    assert "VERDICT" not in loaded and "taken under load" in loaded
    assert "TAKEN UNDER LOAD" in b.load_line(12.0, 12.0, 2)
    assert "quiet machine" in b.load_line(0.1, 2.0, 2)
    assert isinstance(b.load_average(), float)
