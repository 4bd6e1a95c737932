#!/usr/bin/env bash
# Installs the two Blenders the add-on tests run in (idempotent, quiet):
#  - Debian's Blender 3.4 (a real binary; legacy add-on path) + xvfb for the UI test,
#    + python3-numpy, without which Debian's Blender has no numpy;
#  - bpy 5.0.1 (Blender 5.0 as a Python module; extension path) in its own venv,
#    .venv-bpy, so its pins never fight the backend venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v blender >/dev/null 2>&1 || need_apt+=(blender)
command -v xvfb-run >/dev/null 2>&1 || need_apt+=(xvfb)
dpkg -s python3-numpy >/dev/null 2>&1 || need_apt+=(python3-numpy)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
  echo "installing ${need_apt[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! .venv-bpy/bin/python -c "import bpy" >/dev/null 2>&1; then
  echo "installing bpy==5.0.1 into .venv-bpy (pip, ~1 GB)"
  python3 -m venv .venv-bpy
  .venv-bpy/bin/pip install -q --disable-pip-version-check bpy==5.0.1
fi
blender --version 2>/dev/null | head -n 1
.venv-bpy/bin/python -c "import bpy; print('bpy', bpy.app.version_string)"
