"""Per-module summary of a mutmut run (``mutmut run`` writes its results under mutants/).

    python tools/mutation_report.py [--root .] [--survivors]

Prints a markdown table: mutants, killed (a fast test failed or timed out), survived (every
selected test passed), no tests (no selected test reaches the mutated function: it survives
too), not checked, and the survival rate = (survived + no tests) / checked.
"""
import argparse
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def module_counts(meta: Path) -> Counter:
    data = json.loads(meta.read_text())
    return Counter(status_by_exit_code[code] for code in data["exit_code_by_key"].values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="directory holding mutants/")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    args = parser.parse_args()
    metas = sorted((Path(args.root) / "mutants").rglob("*.py.meta"))
    if not metas:
        raise SystemExit(f"no mutmut results under {Path(args.root) / 'mutants'}: run "
                         "`mutmut run` first")
    print("| module | mutants | killed | survived | no tests | not checked | survival |")
    print("|---|---|---|---|---|---|---|")
    total = Counter()
    for meta in metas:
        c = module_counts(meta)
        total += c
        _row(str(meta.relative_to(Path(args.root) / "mutants"))[:-len(".meta")], c)
    _row("all", total)
    if args.survivors:
        for meta in metas:
            data = json.loads(meta.read_text())
            for key, code in sorted(data["exit_code_by_key"].items()):
                if status_by_exit_code[code] in ("survived", "no tests"):
                    print(f"{status_by_exit_code[code]}: {key}")


def _row(name: str, c: Counter):
    killed = sum(c[s] for s in KILLED)
    survived, no_tests, unchecked = c["survived"], c["no tests"], c["not checked"]
    checked = sum(c.values()) - unchecked
    rate = f"{100 * (survived + no_tests) / checked:.1f}%" if checked else "n/a"
    print(f"| {name} | {sum(c.values())} | {killed} | {survived} | {no_tests} | {unchecked} "
          f"| {rate} |")


if __name__ == "__main__":
    main()
