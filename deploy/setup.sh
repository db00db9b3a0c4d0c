#!/usr/bin/env bash
# Set Persona up on a Debian 12 machine (as root, or with sudo): the build tools from Debian,
# a virtualenv at .venv, Persona itself (editable) and its Cython kernels compiled in place.
#
#   bash deploy/setup.sh [--extras LIST] [--apt "PKG ..."]
#
# With no option it installs what `persona` and the demo need: a C compiler, zlib headers, Python
# headers and venv, and the runtime Python packages. --extras adds pip extras of pyproject.toml
# (test, mappy, service); --apt adds Debian packages (deploy/test.sh passes the reference tools).
#
# Safe to run again, and fast then (a few seconds): Debian packages already there are not asked
# for, pip runs only when pyproject.toml changed (or more extras are asked for) since the last
# install (stamp .venv/.persona-install), and the kernels are compiled only when a .pyx/.pxd/.h or
# setup.py is newer than its .so. minimap2's C sources (from mappy's sdist on PyPI) are cached in
# ~/.cache/persona (PERSONA_CACHE_DIR) so later builds, from any clone, need no network.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=""
EXTRA_APT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --extras) EXTRAS="$2"; shift 2 ;;
        --apt) EXTRA_APT="$2"; shift 2 ;;
        *) echo "usage: bash deploy/setup.sh [--extras LIST] [--apt \"PKG ...\"]" >&2; exit 2 ;;
    esac
done

# --- Debian packages: what building the kernels needs, plus what the caller adds -------------------
# shellcheck disable=SC2206
APT_PACKAGES=(gcc libc6-dev zlib1g-dev python3-dev python3-venv $EXTRA_APT)
missing=()
status=$(dpkg-query -W -f='${Package} ${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
for p in "${APT_PACKAGES[@]}"; do
    grep -qx "$p install ok installed" <<<"$status" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "persona setup: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- virtualenv ------------------------------------------------------------------------------------
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "persona setup: creating .venv" >&2
    "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi

# --- Debian's python3-rados (ceph:// stores), when installed: link just its extension into the venv
# (--system-site-packages would drag in Debian's old PyYAML, cryptography, ...). Built for Debian's
# Python 3.11: linked only when the venv's Python has the same extension ABI.
for rados_so in /usr/lib/python3/dist-packages/rados.cpython-*.so; do
    [ -e "$rados_so" ] || continue
    venv_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    venv_suffix=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    if [ "$(basename "$rados_so")" = "rados$venv_suffix" ]; then
        [ -e "$venv_site/$(basename "$rados_so")" ] || ln -sf "$rados_so" "$venv_site/"
    else
        echo "persona setup: $rados_so does not fit the venv's Python ($venv_suffix): no ceph:// stores" >&2
    fi
done

# --- minimap2's C sources: into the cache once (checked by sha256), so builds need no network -------
.venv/bin/python setup.py fetch-minimap2 >/dev/null

# --- Persona, editable, with its Python dependencies (only when pyproject.toml changed) ------------
STAMP=.venv/.persona-install
want_hash=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
have_hash=""; have_extras=""
if [ -f "$STAMP" ]; then read -r have_hash have_extras <"$STAMP" || true; fi
[ "$have_hash" = "$want_hash" ] || have_extras=""
# the extras to have: those asked for now plus those already installed with this pyproject.toml
all_extras=$(printf '%s\n' ${EXTRAS//,/ } ${have_extras//,/ } | sort -u | paste -sd, -)
if [ "$have_hash" != "$want_hash" ] || [ "$all_extras" != "$have_extras" ] || [ ! -x .venv/bin/persona ]; then
    echo "persona setup: installing Persona (editable${all_extras:+, extras $all_extras})" >&2
    # Build deps first so the editable install can run without isolation (faster, offline-friendly).
    .venv/bin/pip install -q "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.26"
    # an install made before the distribution was renamed persona-genomics
    if [ -n "$(.venv/bin/pip list --format=freeze 2>/dev/null | grep -i '^persona==' || true)" ]; then
        .venv/bin/pip uninstall -y -q persona
    fi
    # The kernels are compiled below, in place, once: not by pip, which would compile them all in a
    # temporary directory on every install.
    PERSONA_SKIP_NATIVE=1 PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/pip install -q --no-build-isolation -e ".${all_extras:+[$all_extras]}"
    echo "$want_hash $all_extras" >"$STAMP"
fi

# --- the Cython kernels, in place (editable installs import them from persona/_native) -------------
ext_suffix=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
stale=""; force=""
for pyx in native/*.pyx; do
    so="persona/_native/$(basename "$pyx" .pyx)$ext_suffix"
    if [ ! -f "$so" ]; then stale="$so"; continue; fi
    [ setup.py -nt "$so" ] && force="--force"
    for dep in "$pyx" native/*.pxd native/*.h; do
        if [ -e "$dep" ] && [ "$dep" -nt "$so" ]; then stale="$so"; fi
    done
done
if [ -n "$stale$force" ]; then
    echo "persona setup: compiling the Cython kernels${force:+ (setup.py changed: all of them)}" >&2
    # build_ext itself skips the extensions whose .c (regenerated by Cython when a .pyx/.pxd changed)
    # is older than the .so; --force when setup.py (flags, sources) changed.
    if ! .venv/bin/python setup.py -q build_ext --inplace -j 2 $force >.venv/persona-build.log 2>&1; then
        tail -n 40 .venv/persona-build.log >&2
        echo "persona setup: compiling the kernels failed (whole log: .venv/persona-build.log)" >&2
        exit 1
    fi
    touch persona/_native/*"$ext_suffix"
fi
