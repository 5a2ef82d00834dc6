#!/usr/bin/env bash
# Everything hubbub needs on a fresh Debian/Ubuntu machine: the built-in voices' synthesizers
# (apt) and the Python package with its test extras (pip), installed into the Python that runs
# `python3` (an activated virtual environment) or into $PYTHON. torch stays at 2.13.0 (the CPU
# build where one is provided locally); an unpinned torch would pull a multi-GB CUDA build.
#
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh
#   PYTHON=/path/to/venv/bin/python bash scripts/setup.sh      # the same, without activating
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# The built-in voices' three synthesizer families (hubbub.voices.synth.INSTALL_HINT, docs/voices.md).
APT_PACKAGES="espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
fi
if [ -z "${VIRTUAL_ENV:-}" ] && [ "$("$PYTHON" -c 'import sys; print(sys.prefix == sys.base_prefix)')" = True ]; then
  echo "note: installing into $("$PYTHON" -c 'import sys; print(sys.prefix)'), not a virtual environment" >&2
fi
"$PYTHON" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "hubbub set up in $("$PYTHON" -c 'import sys; print(sys.prefix)'): $("$PYTHON" -c 'import hubbub, torch; print("torch", torch.__version__)')"
