#!/usr/bin/env bash
# Everything hubbub needs on a fresh Debian/Ubuntu machine: the built-in voices' synthesizers and
# the Python package with its test extras. torch stays at 2.13.0 (the CPU build where one is
# provided locally); an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! command -v espeak-ng >/dev/null || ! command -v flite >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng flite >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0"
python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "hubbub set up: $(python3 -c 'import hubbub, torch; print("torch", torch.__version__)')"
