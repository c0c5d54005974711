#!/usr/bin/env bash
# Set up this machine for serl_ctrl: system libraries, torch (CPU), then serl_ctrl itself in
# editable mode with its Python dependencies. Works on a fresh Debian/Ubuntu machine, as root or
# with sudo; idempotent, and quick (a few seconds) when everything is already in place.
#
#   bash scripts/install.sh           # what the demo and the command line need
#   bash scripts/install.sh --test    # + test tools: espeak-ng, libportaudio2, the "speech" extra
#                                     #   (pocketsphinx, sounddevice) and ROS 2 Jazzy wheels
#
# Environment:
#   PYTHON=python3.11             interpreter to install into (default: python3)
#   SERL_CTRL_FORCE_INSTALL=1     run the pip steps even when everything looks installed
#
# torch: the CPU wheel torch==2.13.0 is installed FIRST, then every pip call gets
# `-c scripts/constraints.txt` (torch==2.13.0), so pip can never resolve a newer torch, whose
# default Linux build pulls gigabytes of CUDA. pip finds the CPU wheel through its configured
# find-links/index (pip config); point PIP_FIND_LINKS at a CPU wheel on machines that lack it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/scripts/constraints.txt"
ROS_REQUIREMENTS="$ROOT/scripts/requirements-ros-test.txt"
TORCH_VERSION="$(sed -n 's/^torch==\([^[:space:]#]*\).*/\1/p' "$CONSTRAINTS")"

WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "[install] $*" >&2; }
die() { echo "[install] error: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root or sudo to run: $*"
  fi
}

[ -n "$TORCH_VERSION" ] || die "no torch==VERSION line in $CONSTRAINTS"
command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=...)"

# ----------------------------------------------------------------------------- system packages
# libosmesa6 / libegl1 + libegl-mesa0 / libgl1: headless MuJoCo rendering (MUJOCO_GL=osmesa|egl);
# ffmpeg: videos; with --test: espeak-ng (speaks test sentences for speech recognition) and
# libportaudio2 (without it `import sounddevice` fails).
APT_PACKAGES=(libosmesa6 libegl1 libegl-mesa0 libgl1 ffmpeg)
[ "$WITH_TEST" = 1 ] && APT_PACKAGES+=(espeak-ng libportaudio2)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    log "apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    log "warning: not a Debian/Ubuntu system; install these yourself: ${missing[*]}"
  fi
fi

# ----------------------------------------------------------------------------- pip itself
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  log "no pip for $PY: installing it"
  "$PY" -m ensurepip --upgrade >/dev/null 2>&1 \
    || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi
# A distribution's own Python (PEP 668 "externally managed", e.g. Debian 12's /usr/bin/python3)
# refuses pip installs outside a virtual environment. This script sets up a dedicated machine, so it
# installs anyway; use a virtual environment (PYTHON=.venv/bin/python) to keep the system clean.
if "$PY" - <<'EOF'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
EOF
then
  log "$PY is externally managed (PEP 668): installing with PIP_BREAK_SYSTEM_PACKAGES=1"
  export PIP_BREAK_SYSTEM_PACKAGES=1
fi

export PIP_ROOT_USER_ACTION=ignore  # no "running pip as root" warning (older pips ignore it)
PIP=("$PY" -m pip install --disable-pip-version-check --no-input -q)

# ----------------------------------------------------------------------------- torch (CPU) first
torch_installed="$("$PY" -c 'import importlib.metadata as m
try: print(m.version("torch").split("+")[0])
except m.PackageNotFoundError: print("none")')"
if [ "$torch_installed" != "$TORCH_VERSION" ] || [ "${SERL_CTRL_FORCE_INSTALL:-0}" = 1 ]; then
  log "pip install torch==$TORCH_VERSION (CPU wheel; found: $torch_installed)"
  "${PIP[@]}" -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
fi

# ----------------------------------------------------------------------------- serl_ctrl + deps
EXTRAS="test"
REQ_FILES=()
if [ "$WITH_TEST" = 1 ]; then
  EXTRAS="test,speech"
  REQ_FILES=("$ROS_REQUIREMENTS")
fi

# Skip pip (about 15-30 s even when nothing changes) when the install is current: serl_ctrl imports
# from THIS checkout, its console script exists, every requirement of it (with the extras) and of
# the requirement files is satisfied, and setup.py/setup.cfg/the pins are unchanged since the last
# successful install (stamp in build/, which git ignores).
STAMP_DIR="$ROOT/build"
py_prefix="$("$PY" -c 'import sys; print(sys.prefix)')"
STAMP="$STAMP_DIR/.install-stamp-$(echo "$py_prefix" | sha256sum | cut -c1-12)-${EXTRAS//,/-}"
fingerprint="$( { echo "$PY $py_prefix $ROOT $EXTRAS";
                  cat setup.py setup.cfg "$CONSTRAINTS" "${REQ_FILES[@]}"; } | sha256sum | cut -d' ' -f1)"

install_is_current() {
  [ "${SERL_CTRL_FORCE_INSTALL:-0}" != 1 ] || return 1
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] || return 1
  # run from / so the checkout in the current directory cannot shadow the installed package
  (cd / && "$PY" - "$ROOT" "$EXTRAS" "${REQ_FILES[@]}" <<'EOF'
import importlib.metadata as md
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

root, extras, req_files = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]


def satisfied(line):
    req = Requirement(line)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        return False
    return req.specifier.contains(version, prereleases=True)


spec = importlib.util.find_spec("serl_ctrl")
if spec is None or Path(spec.origin).resolve().parent != (root / "serl_ctrl").resolve():
    sys.exit(1)
if not os.path.exists(os.path.join(sysconfig.get_path("scripts"), "serl-ctrl")):
    sys.exit(1)
for line in md.distribution("serl_ctrl").requires or []:
    req = Requirement(line)
    needed = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras)
    if needed and not satisfied(line):
        sys.exit(1)
for path in req_files:
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not satisfied(line):
            sys.exit(1)
EOF
  )
}

if install_is_current; then
  log "serl_ctrl[$EXTRAS] is installed and current (SERL_CTRL_FORCE_INSTALL=1 reinstalls)"
else
  # --use-pep517: pip builds an (editable) wheel and writes the console scripts to bin/ itself;
  # the legacy `setup.py develop` path would honour setup.cfg and hide them in lib/serl_ctrl.
  log "pip install -e .[$EXTRAS] ${REQ_FILES[*]:+(+ ROS 2 test wheels)}"
  ros_args=()
  [ "${#REQ_FILES[@]}" -gt 0 ] && ros_args=(-r "$ROS_REQUIREMENTS")
  "${PIP[@]}" -c "$CONSTRAINTS" --use-pep517 -e ".[$EXTRAS]" "${ros_args[@]}"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
  mkdir -p "$STAMP_DIR"
  echo "$fingerprint" >"$STAMP"
fi

# ----------------------------------------------------------------------------- checks
scripts_dir="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
[ -x "$scripts_dir/serl-ctrl" ] || die "serl-ctrl was not installed into $scripts_dir"
case ":$PATH:" in
  *":$scripts_dir:"*) ;;
  *) command -v serl-ctrl >/dev/null 2>&1 \
       || log "note: $scripts_dir is not on PATH; run $scripts_dir/serl-ctrl or add it to PATH" ;;
esac
if [ "$WITH_TEST" = 1 ]; then
  # The ROS wheels reach their shared libraries through LD_LIBRARY_PATH, which their
  # ros-wheels-bootstrapper .pth sets by re-executing Python once; no other setup is needed.
  (cd / && ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST timeout 120 "$PY" -c \
    'import rclpy; rclpy.init(); rclpy.try_shutdown()') \
    || die "rclpy from the ROS 2 wheels does not initialise (see the error above)"
fi
log "done"
