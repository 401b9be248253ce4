#!/usr/bin/env bash
# Installs the one tool everything else comes from: uv, pinned, in a private virtualenv.
# uv then installs the project's exact dependency set from uv.lock. Needs Python >= 3.11.
set -euo pipefail

UV_VERSION="${UV_VERSION:-0.13.8}"
TOOLS_DIR="${1:-.tools}"
PYTHON="${PYTHON:-python3}"

if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "==> installing Python 3 with venv support (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"CarbonFlow needs Python >= 3.11, found {sys.version.split()[0]}")
PY

if [ ! -x "$TOOLS_DIR/bin/uv" ] || [ "$("$TOOLS_DIR/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "==> installing uv $UV_VERSION into $TOOLS_DIR"
  "$PYTHON" -m venv "$TOOLS_DIR"
  "$TOOLS_DIR/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
