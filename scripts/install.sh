#!/usr/bin/env bash
# Installs DaTaSeg and every dependency, at locked versions, into the active Python environment.
#
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh
#
# Python 3.10 to 3.13. It picks the newest stack the machine can have (docs/INSTALL.md), and
# says which, before downloading anything:
#   main    Detectron2 main at the commit in requirements/detectron2.txt, built here with its
#           compiled ops (CPU always; CUDA too when torch sees a GPU or DATASEG_BUILD_CUDA=1),
#           from github.com, or from the source archive in DETECTRON2_SOURCE; numpy 2, Pillow 11+
#           and the newest releases of the rest (requirements/locks/main-py<X.Y>.txt).
#   legacy  the last fallback, Python <= 3.11 only: Detectron2 v0.6's Python sources from PyPI
#           (hash-checked), without compiled ops, numpy 1.23 and the 2021 pins they need
#           (requirements/locks/legacy-py<X.Y>.txt).
# Idempotent: a second run finds everything installed and downloads nothing.
#
# Environment variables:
#   PYTHON                 interpreter to install into (default: python)
#   DETECTRON2_SOURCE      a Detectron2 source archive or folder of the commit in
#                          requirements/detectron2.txt, for machines without github.com
#   DATASEG_STACK          auto (default) | main | legacy: force a stack (an impossible one fails)
#   DATASEG_CACHE          where the v0.6 source archive is kept (default ~/.cache/dataseg)
#   DATASEG_BUILD_CUDA     auto (default) | 1 (force the CUDA builds) | 0 (never build CUDA code)
#   DATASEG_D2_FROM_GIT=0  do not try github.com (no network probe)
#   DATASEG_INSTALL_PLAN=1 print the chosen stack and lock file, install nothing
#   DATASEG_REINSTALL=1    re-run the editable install of this project (e.g. after kernel edits)
#   DATASEG_REINSTALL_D2=1 rebuild Detectron2 main although one with compiled ops is installed
#   DATASEG_SKIP_BROWSER=1 do not install Chromium (only the web demo's browser test needs it)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # checks cd /
CACHE="${DATASEG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dataseg}"
REQ="$ROOT/requirements"
d2_value() { sed -n "s/^$1=//p" "$REQ/detectron2.txt"; }
D2_COMMIT="$(d2_value commit)"
D2_REPO="$(d2_value repository)"
LEGACY_URL="$(d2_value legacy_url)"
LEGACY_SHA256="$(d2_value legacy_sha256)"

# --isolated: ignore the machine's pip config (its find-links offers a CPU-only torch wheel
# for which no torchvision build exists).
pip_install() { "$PY" -m pip --isolated --disable-pip-version-check install "$@"; }
say() { printf '\n==> %s\n' "$*"; }
die() { printf 'scripts/install.sh: %s\n' "$*" >&2; exit 1; }

PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
    || die "cannot run '$PY' (set PYTHON, or activate a virtual environment)"
case "$PYVER" in
    3.10|3.11|3.12|3.13) ;;
    *) die "Python $PYVER is not supported: DaTaSeg installs on Python 3.10 to 3.13" ;;
esac
OLD_PYTHON=0
case "$PYVER" in 3.10|3.11) OLD_PYTHON=1 ;; esac

# Which Detectron2 is installed now: "main" (compiled ops), "legacy" (v0.6 with DaTaSeg's
# stand-in for the ops, current version) or "" (none, or one to replace).
STUB_VERSION="$(sed -n 's/^STUB_VERSION = //p' "$ROOT/scripts/detectron2_C_stub.py")"
installed_detectron2() {
    (cd / && "$PY" - "$STUB_VERSION" 2>/dev/null <<'EOF'
import sys
try:
    from detectron2 import _C
except Exception:
    sys.exit(0)
stub = getattr(_C, "STUB_VERSION", None)
if stub is None:
    print("main")
elif str(stub) == sys.argv[1]:
    print("legacy")
EOF
    ) || true
}
github_reachable() {
    [ "${DATASEG_D2_FROM_GIT:-auto}" != "0" ] && timeout 20 git ls-remote "$D2_REPO" >/dev/null 2>&1
}

# ---------------------------------------------------------------- choose the stack (no download)
WANT="${DATASEG_STACK:-auto}"
HAVE="$(installed_detectron2)"
D2_FROM=""
case "$WANT" in auto|main|legacy) ;; *) die "DATASEG_STACK=$WANT: expected auto, main or legacy" ;; esac
if [ "$WANT" = "legacy" ]; then
    [ "$OLD_PYTHON" = 1 ] || die "DATASEG_STACK=legacy needs Python 3.11 or older (Detectron2 v0.6 needs numpy<1.24, which has no wheels for Python $PYVER)"
    STACK=legacy
elif [ -n "${DETECTRON2_SOURCE:-}" ]; then
    [ -e "$DETECTRON2_SOURCE" ] || die "DETECTRON2_SOURCE=$DETECTRON2_SOURCE: no such file or folder"
    STACK=main D2_FROM="$(cd "$(dirname "$DETECTRON2_SOURCE")" && pwd)/$(basename "$DETECTRON2_SOURCE")"
elif [ "$HAVE" = "main" ] && [ "${DATASEG_REINSTALL_D2:-0}" != "1" ]; then
    STACK=main
elif github_reachable; then
    STACK=main D2_FROM="git+$D2_REPO@$D2_COMMIT"
elif [ "$WANT" = "main" ]; then
    die "DATASEG_STACK=main: github.com cannot be reached and DETECTRON2_SOURCE is not set: download $D2_REPO/archive/$D2_COMMIT.tar.gz on a machine that can, then run DETECTRON2_SOURCE=/path/to/it bash scripts/install.sh"
elif [ "$OLD_PYTHON" = 1 ]; then
    STACK=legacy
else
    die "Python $PYVER needs Detectron2 main, and neither github.com nor DETECTRON2_SOURCE can provide it here: download $D2_REPO/archive/$D2_COMMIT.tar.gz on a machine that can, then run DETECTRON2_SOURCE=/path/to/it bash scripts/install.sh (or use Python 3.11, where the Detectron2 v0.6 fallback installs from PyPI)"
fi
LOCK="$REQ/locks/$STACK-py$PYVER.txt"
[ -f "$LOCK" ] || die "no lock for the $STACK stack on Python $PYVER ($LOCK): write it with 'python scripts/lock.py --stack $STACK --python $PYVER'"
if [ "$STACK" = "main" ]; then
    say "stack: main (Python $PYVER, Detectron2 main ${D2_COMMIT:0:7} with compiled ops, numpy 2; $(basename "$LOCK"))"
else
    say "stack: legacy (Python $PYVER, Detectron2 v0.6 Python sources WITHOUT compiled ops, numpy 1.23; $(basename "$LOCK"))"
    echo "Detectron2 main cannot be had here (github.com unreachable, DETECTRON2_SOURCE unset${DATASEG_STACK:+, DATASEG_STACK=$DATASEG_STACK}): this is the 2021 fallback. Set DETECTRON2_SOURCE to a source archive of $D2_REPO at ${D2_COMMIT:0:7} for the main stack."
fi
if [ "${DATASEG_INSTALL_PLAN:-0}" = "1" ]; then
    echo "plan: stack=$STACK python=$PYVER lock=${LOCK#"$ROOT"/} detectron2=${D2_FROM:-${HAVE:-v0.6 sources}}"
    exit 0
fi

say "torch and torchvision (matching PyPI builds)"
pip_install -c "$LOCK" -r "$REQ/torch.txt"

say "locked dependencies"
EXTRA=()
[ "$STACK" = "legacy" ] && EXTRA=(-r "$REQ/legacy.txt")
pip_install -c "$LOCK" -r "$REQ/base.txt" "${EXTRA[@]}"
# Installed without their declared dependencies (see the file), hash-checked.
pip_install --no-deps -r "$REQ/nodeps.txt"

say "detectron2"
if [ "${DATASEG_BUILD_CUDA:-auto}" = "1" ]; then export FORCE_CUDA=1; fi
if [ "$STACK" = "main" ]; then
    if [ "$HAVE" = "main" ] && [ "${DATASEG_REINSTALL_D2:-0}" != "1" ]; then
        echo "Detectron2 with compiled ops already installed (DATASEG_REINSTALL_D2=1 rebuilds it)"
    else
        echo "building Detectron2 from ${D2_FROM:?} (compiled ops: a few minutes)"
        MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}" \
            pip_install --no-build-isolation --no-deps "$D2_FROM"
    fi
elif [ "$HAVE" = "legacy" ]; then
    echo "Detectron2 v0.6 (Python sources, no compiled ops) already installed"
else
    echo "Detectron2 v0.6 Python sources from PyPI (pb1-detectron2), no compiled ops"
    mkdir -p "$CACHE"
    ARCHIVE="$CACHE/pb1-detectron2-0.6.tar.gz"
    if [ ! -f "$ARCHIVE" ]; then
        "$PY" -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2] + '.part')" "$LEGACY_URL" "$ARCHIVE"
        mv "$ARCHIVE.part" "$ARCHIVE"
    fi
    echo "$LEGACY_SHA256  $ARCHIVE" | sha256sum -c - || { rm -f "$ARCHIVE"; die "sha256 mismatch: removed $ARCHIVE, run again"; }
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
