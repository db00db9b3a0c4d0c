#!/usr/bin/env bash
# Install everything Persona needs on a fresh Debian 12 machine (run as root):
# the reference tools from Debian, a virtualenv at .venv, and Persona itself
# (editable, with its Cython kernels compiled). Safe to run again; fast when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(samtools picard-tools minimap2 art-nextgen-simulation-tools bwa seqtk tabix zlib1g-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "persona setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "persona setup: creating .venv" >&2
    "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
# Build deps first so the editable build can run without isolation (faster, offline-friendly).
.venv/bin/pip install -q "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.26"
.venv/bin/pip install -q --no-build-isolation -e ".[test,service]"
# Compile the kernels in place (editable installs import them from persona/_native).
.venv/bin/python setup.py -q build_ext --inplace -j 2 >/dev/null
