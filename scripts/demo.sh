#!/usr/bin/env bash
# The demo, from a fresh machine: set it up, record 10 scripted pick-cube demonstrations in MuJoCo
# and write them to runs/demo/ with a video (runs/demo/pickcube.mp4).
#
#   bash scripts/demo.sh            # extra arguments go to `serl-ctrl demos`
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

bash scripts/install.sh

# The console script installed for this interpreter (its bin/ need not be on PATH).
SERL_CTRL="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/serl-ctrl"

# Headless rendering for the video: EGL, or OSMesa where EGL cannot render (scripts/test.sh has
# the measurements). `serl-ctrl info --check-gl` renders a few frames with the given backend.
if [ -z "${MUJOCO_GL:-}" ]; then
  for backend in egl osmesa; do
    if MUJOCO_GL="$backend" "$SERL_CTRL" info --check-gl --json 2>/dev/null | tail -n 1 \
        | "$PY" -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["gl_check"]["ok"] else 1)'; then
      export MUJOCO_GL="$backend"
      break
    fi
  done
fi
echo "[demo] MUJOCO_GL=${MUJOCO_GL:-unset}" >&2

"$SERL_CTRL" demos --task pickcube --backend mujoco --n 10 \
  --out runs/demo --video runs/demo/pickcube.mp4 "$@"
