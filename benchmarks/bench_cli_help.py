"""Time to answer ``--help`` for each command line (issue 25: under 3 s each).

    python benchmarks/bench_cli_help.py [--repeats 5] [--python PYTHON]

Runs ``PYTHON SCRIPT --help`` for train_net.py, demo/demo.py, demo/web.py and
tools/export_model.py ``--repeats`` times each (fresh processes, after one untimed warm-up run
each, so the file cache is warm) and prints the median and the max wall seconds, next to the
seconds of ``python -c "import torch"`` and of ``import dataseg`` (what --help used to pay
before the arguments were parsed), and the ratio.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_net.py", "demo/demo.py", "demo/web.py", "tools/export_model.py"]


def seconds(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return took


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args(argv)
    rows = [(f"{s} --help", [args.python, s, "--help"]) for s in SCRIPTS]
    rows += [("import torch", [args.python, "-c", "import torch"]),
             ("import dataseg", [args.python, "-c", "import sys; sys.path.insert(0, '.'); "
                                 "import dataseg"])]
    results = {}
    print(f"python: {args.python}; {args.repeats} runs each (after one warm-up)")
    for name, cmd in rows:
        seconds(cmd)
        times = [seconds(cmd) for _ in range(args.repeats)]
        results[name] = statistics.median(times)
        print(f"{name:32s} median {results[name]:6.2f} s   max {max(times):6.2f} s")
    slowest = max(results[f"{s} --help"] for s in SCRIPTS)
    print(f"slowest --help: {slowest:.2f} s ({'under' if slowest < 3 else 'OVER'} the 3 s "
          f"budget); import dataseg / slowest --help = "
          f"{results['import dataseg'] / slowest:.1f}x")


if __name__ == "__main__":
    main()
