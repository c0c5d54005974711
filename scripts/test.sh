#!/usr/bin/env bash
# Run the test suite of serl_ctrl, setting this machine up first (a fresh Debian/Ubuntu is fine):
#
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh -k cli -x        # extra arguments go to pytest
#
# Environment: PYTHON (default python3); MUJOCO_GL is chosen here when unset (see below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"

bash scripts/install.sh --test

log() { echo "[test] $*" >&2; }

# ----------------------------------------------------------------------------- headless rendering
# MuJoCo renders offscreen through EGL or OSMesa; both are Mesa's llvmpipe on a CPU-only machine.
# Measured here (2 cores, mujoco 4.0, Mesa 22.3; frames/s at 64x64 / 128x128 / 480x480):
#   idle machine:  egl 55 / 54 / 37   osmesa 51 / 51 / 42   (first frame: egl 0.3 s, osmesa 0.07 s)
#   busy machine:  egl 24 / 23 / 17   osmesa 24 / 24 / 17
# i.e. the same within noise. EGL is taken (the standard headless path, and the one that uses a GPU
# when there is one), falling back to OSMesa when EGL cannot render. Note that a scene must be
# computed (mj_forward) before rendering, or every geom sits at the origin and the frame is black.
gl_probe() {
  MUJOCO_GL="$1" timeout 120 "$PY" - <<'PYEOF' >/dev/null 2>&1
import mujoco
m = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><light pos="0 0 1"/><geom type="sphere" size=".1"/></worldbody></mujoco>')
d = mujoco.MjData(m)
mujoco.mj_forward(m, d)
r = mujoco.Renderer(m, 64, 64)
r.update_scene(d)
ok = r.render().mean() > 0
r.close()
raise SystemExit(0 if ok else 1)
PYEOF
}
if [ -z "${MUJOCO_GL:-}" ]; then
  for backend in egl osmesa; do
    if gl_probe "$backend"; then export MUJOCO_GL="$backend"; break; fi
    log "MuJoCo cannot render with MUJOCO_GL=$backend here"
  done
  [ -n "${MUJOCO_GL:-}" ] || log "warning: no headless MuJoCo rendering; rendering tests will fail"
fi
log "MUJOCO_GL=${MUJOCO_GL:-unset}"

# ----------------------------------------------------------------------------- ROS 2 (real rclpy)
# Other test runs (other checkouts, CI) may share this machine: a DDS domain of our own keeps their
# nodes and topics out of ours, and discovery stays on the loopback interface (Jazzy's setting;
# ROS_LOCALHOST_ONLY is its deprecated Humble-era form). rclpy needs nothing else: the wheels'
# bootstrapper sets LD_LIBRARY_PATH (see scripts/requirements-ros-test.txt).
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
log "ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE"

# ----------------------------------------------------------------------------- pytest
# --timeout: one hung test (a simulator, a ROS spin, a subprocess) fails alone instead of eating
# the CI budget; -r fEs: list failures, errors and skip reasons; --durations: the slowest tests.
exec "$PY" -m pytest tests -q -p no:cacheprovider --timeout=600 -r fEs --durations=15 "$@"
