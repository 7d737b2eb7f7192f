#!/usr/bin/env bash
# Installs DaTaSeg and every dependency, pinned, into the active Python environment.
#
#   python -m venv .venv && . .venv/bin/activate && bash scripts/install.sh
#
# Idempotent: a second run finds everything installed and downloads nothing.
# Environment variables:
#   PYTHON                 interpreter to install into (default: python)
#   DATASEG_CACHE          where the detectron2 source archive is kept (default ~/.cache/dataseg)
#   DATASEG_BUILD_CUDA     auto (default) | 1 (force the CUDA kernel) | 0 (never build it)
#   DATASEG_REINSTALL=1    re-run the editable install of this project (e.g. after kernel edits)
#   DATASEG_SKIP_BROWSER=1 do not install Chromium (only the web demo's browser test needs it)
#   DETECTRON2_GIT_REF     when github.com is reachable, detectron2 is installed from its
#                          repository at this tag or commit (with its compiled ops) instead of
#                          the v0.6 PyPI sources. Default: the tag v0.6 (commit d1e04565).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
CACHE="${DATASEG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dataseg}"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
D2_URL="https://files.pythonhosted.org/packages/60/26/48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
D2_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
D2_REF="${DETECTRON2_GIT_REF:-v0.6}"

# --isolated: ignore the machine's pip config (its find-links offers a CPU-only torch wheel
# for which no torchvision build exists).
pip_install() { "$PY" -m pip --isolated --disable-pip-version-check install "$@"; }
say() { printf '\n==> %s\n' "$*"; }

"$PY" - <<'EOF'
import sys
if sys.version_info < (3, 9):
    sys.exit(f"DaTaSeg needs Python >= 3.9, found {sys.version.split()[0]}")
EOF

say "torch and torchvision (matching PyPI builds)"
pip_install -c "$CONSTRAINTS" torch torchvision

say "pinned dependencies"
pip_install -c "$CONSTRAINTS" -r "$ROOT/requirements/base.txt"
# These packages pin versions they do not need (panopticapi-lite: pillow>=10.4) or pull in
# numpy 2 (sentence-transformers); their code works with the pins above, so no deps.
pip_install --no-deps -r "$ROOT/requirements/nodeps.txt"

say "detectron2"
# Up to date: detectron2 0.6 with real compiled ops, or with the current version of our stand-in.
STUB_VERSION="$(sed -n 's/^STUB_VERSION = //p' "$ROOT/scripts/detectron2_C_stub.py")"
if (cd / && "$PY" -c "
import sys, detectron2
from detectron2 import _C
ok = detectron2.__version__.startswith('0.6') and getattr(_C, 'STUB_VERSION', $STUB_VERSION) == $STUB_VERSION
sys.exit(0 if ok else 1)" 2>/dev/null); then
    echo "detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') already installed"
elif [ "${DATASEG_D2_FROM_GIT:-auto}" != "0" ] && timeout 20 git ls-remote https://github.com/facebookresearch/detectron2 >/dev/null 2>&1; then
    echo "github.com reachable: detectron2 from its repository at $D2_REF (with compiled ops)"
    pip_install --no-build-isolation "git+https://github.com/facebookresearch/detectron2@$D2_REF"
else
    echo "github.com unreachable: detectron2 v0.6 Python sources from PyPI (pb1-detectron2), no compiled ops"
    mkdir -p "$CACHE"
    ARCHIVE="$CACHE/pb1-detectron2-0.6.tar.gz"
    if [ ! -f "$ARCHIVE" ]; then
        "$PY" -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2] + '.part')" "$D2_URL" "$ARCHIVE"
        mv "$ARCHIVE.part" "$ARCHIVE"
    fi
    echo "$D2_SHA256  $ARCHIVE" | sha256sum -c - || { rm -f "$ARCHIVE"; echo "sha256 mismatch: removed $ARCHIVE, run again" >&2; exit 1; }
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    tar -xzf "$ARCHIVE" -C "$WORK"
    "$PY" "$ROOT/scripts/patch_detectron2_sources.py" "$WORK/pb1-detectron2-0.6"
    pip_install --no-build-isolation --no-deps "$WORK/pb1-detectron2-0.6"
fi

say "Chromium for the web demo's browser test (system package)"
# Playwright drives the system's Chromium (it never downloads a browser). Installed with
# apt-get where it is missing and we are root; skipped when any Chromium is on PATH.
if [ "${DATASEG_SKIP_BROWSER:-0}" = "1" ]; then
    echo "skipped (DATASEG_SKIP_BROWSER=1)"
elif command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || command -v google-chrome >/dev/null 2>&1 || [ -n "${DATASEG_CHROMIUM:-}" ]; then
    echo "already installed: $(command -v chromium || command -v chromium-browser || command -v google-chrome || echo "$DATASEG_CHROMIUM")"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
    echo "installed $(chromium --version 2>/dev/null)"
else
    echo "WARNING: no Chromium found and cannot apt-get install it (not root or not Debian):" \
         "install your system's chromium package, or set DATASEG_CHROMIUM, for" \
         "tests/web/test_browser.py" >&2
fi

say "dataseg (editable)"
# (checked from / so that the checkout itself is not what gets imported)
if [ "${DATASEG_REINSTALL:-0}" != "1" ] && (cd / && "$PY" -c "import pathlib, sys, dataseg; sys.exit(0 if pathlib.Path(dataseg.__file__).resolve().parent == pathlib.Path(sys.argv[1]).resolve() / \"dataseg\" else 1)" "$ROOT" 2>/dev/null)
then
    echo "dataseg already installed from $ROOT (DATASEG_REINSTALL=1 to rebuild)"
else
    pip_install --no-build-isolation --no-deps -e "$ROOT"
fi

say "done"
"$PY" -m dataseg.collect_env --short
