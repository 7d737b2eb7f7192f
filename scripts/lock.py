"""Writes the version locks that scripts/install.sh installs with, one per stack and Python.

    python scripts/lock.py                      # every stack, every supported Python
    python scripts/lock.py --stack main --python 3.12

A stack is what scripts/install.sh chooses between (see docs/INSTALL.md):

- ``main``: Detectron2 main at the pinned commit (``requirements/detectron2.txt``), built from
  source with its compiled ops, on the newest releases: numpy 2, Pillow 11+, ...
- ``legacy``: Detectron2 v0.6's Python sources from PyPI (pb1-detectron2) without compiled ops,
  with the 2021 pins they need (``requirements/legacy.txt``: numpy<1.24, Pillow<10, ...);
  Python 3.11 and older only.

Each lock, ``requirements/locks/<stack>-py<X.Y>.txt``, is the full list of ``name==version``
that pip resolves for ``requirements/torch.txt`` + ``requirements/base.txt`` (+ legacy.txt) on
CPython X.Y, linux x86_64. It is resolved without installing anything (``pip install
--dry-run --report`` with the target Python's tags), so every lock is made from one machine in
about a minute each. pip only resolves wheels for another Python, so the few dependencies
published as source archives only (pure-Python ones, e.g. fvcore) are first built into wheels
(``py3-none-any``) in a temporary folder that the resolution sees.

Detectron2 itself, this project and ``requirements/nodeps.txt`` (hash-checked) are installed
apart from the lock and are not in it.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
LOCKS = REQ / "locks"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
STACKS = {"main": PYTHONS, "legacy": ("3.10", "3.11")}  # v0.6's numpy<1.24 stops at 3.11
PLATFORMS = ["linux_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{g}_x86_64" for g in range(5, 40)]


def _pip(pip, *args, **kw):
    return subprocess.run([*pip, "--isolated", "--disable-pip-version-check", *args],
                          check=True, **kw)


def _inputs(stack):
    files = [REQ / "torch.txt", REQ / "base.txt"]
    return files + [REQ / "legacy.txt"] if stack == "legacy" else files


def _resolve(pip, stack, py, wheel_dir, report):
    """pip's resolution of the stack's requirements for CPython ``py`` (a dry run)."""
    abi = "cp" + py.replace(".", "")
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--only-binary=:all:", "--find-links", str(wheel_dir), "--python-version", py,
            "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for plat in PLATFORMS:
        args += ["--platform", plat]
    for f in _inputs(stack):
        args += ["-r", str(f)]
    _pip(pip, *args)
    return {i["metadata"]["name"]: i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]}


def _build_source_only(pip, stack, wheel_dir, report):
    """Resolves for the running Python with source archives allowed, and builds a wheel of each
    dependency that came as a source archive (they must be pure Python: checked)."""
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    for f in _inputs(stack):
        args += ["-r", str(f)]
    _pip(pip, *args)
    for item in json.loads(report.read_text())["install"]:
        url = item["download_info"]["url"]
        if url.endswith((".tar.gz", ".zip", ".tar.bz2")):
            name, version = item["metadata"]["name"], item["metadata"]["version"]
            _pip(pip, "wheel", "--no-deps", "--quiet", "-w", str(wheel_dir), f"{name}=={version}")
    impure = [w.name for w in wheel_dir.glob("*.whl") if not w.name.endswith("-py3-none-any.whl")
              and not w.name.endswith("-py2.py3-none-any.whl")]
    if impure:
        raise SystemExit(f"source-only dependencies that are not pure Python: {impure}; "
                         "their wheels cannot be used for other Python versions")


def write_lock(stack, py, versions):
    LOCKS.mkdir(parents=True, exist_ok=True)
    path = LOCKS / f"{stack}-py{py}.txt"
    inputs = " + ".join(str(f.relative_to(ROOT)) for f in _inputs(stack))
    lines = [f"# Lock of the '{stack}' stack for CPython {py} (linux x86_64): {inputs}.",
             f"# Written by `python scripts/lock.py` on {datetime.date.today()}; do not edit.",
             "# scripts/install.sh installs with it as a pip constraints file."]
    lines += [f"{name}=={versions[name]}" for name in sorted(versions, key=str.lower)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", choices=sorted(STACKS), nargs="*", default=sorted(STACKS))
    parser.add_argument("--python", nargs="*", default=list(PYTHONS), choices=PYTHONS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dataseg_lock") as tmp:
        tmp = Path(tmp)
        # a recent pip (the running one may predate --report / cross-version dry runs)
        subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
        pip = [str(tmp / "venv" / "bin" / "python"), "-m", "pip"]
        _pip(pip, "install", "--quiet", "--upgrade", "pip")
        for stack in args.stack:
            wheel_dir = tmp / f"wheels-{stack}"
            wheel_dir.mkdir()
            _build_source_only(pip, stack, wheel_dir, tmp / "native.json")
            for py in args.python:
                if py not in STACKS[stack]:
                    continue
                versions = _resolve(pip, stack, py, wheel_dir, tmp / f"{stack}-{py}.json")
                print(f"{write_lock(stack, py, versions)}: {len(versions)} packages", flush=True)


if __name__ == "__main__":
    main()
