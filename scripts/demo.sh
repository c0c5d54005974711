#!/usr/bin/env bash
# The main job, from a fresh machine, headless, in a few minutes: record 20 scripted pick-cube
# demonstrations in MuJoCo, train a policy on them, export it to ONNX (train does), evaluate it,
# print its success rate and latency and write videos; then evaluate the shipped diffusion policy.
# Everything lands in runs/demo/ (expert.mp4, bc/policy.onnx, bc.mp4, diffusion.mp4).
#
#   bash scripts/demo.sh
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

OUT=runs/demo
rm -rf "$OUT"   # the demo's own output: start clean so episodes are not appended to an old run
"$SERL_CTRL" demos --task pickcube --backend mujoco --n 20 --noise 0.1 --out "$OUT/demos" \
  --video "$OUT/expert.mp4" --json | tail -n 1
echo "[demo] training a policy on the demonstrations (~30 s), exporting it to $OUT/bc/policy.onnx" >&2
"$SERL_CTRL" train --algo bc --task pickcube --demos "$OUT/demos" --steps 1500 --eval-episodes 10 \
  --out "$OUT/bc" --json | tail -n 1
echo "[demo] evaluating the exported policy in MuJoCo (onnxruntime)" >&2
"$SERL_CTRL" eval --policy "$OUT/bc" --episodes 20 --video "$OUT/bc.mp4" --json | tail -n 1
if ls policies/pickcube_diffusion_state.onnx >/dev/null 2>&1; then
  echo "[demo] evaluating the shipped diffusion policy (DDIM-10)" >&2
  "$SERL_CTRL" eval --policy pickcube_diffusion_state --episodes 20 --video "$OUT/diffusion.mp4" --json | tail -n 1
fi
echo "[demo] videos in $OUT: $(cd "$OUT" && ls *.mp4 | tr "\n" " ")" >&2
