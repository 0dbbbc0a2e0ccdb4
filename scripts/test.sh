#!/usr/bin/env bash
# Set up everything the tests need, then run them (the README's test command; CI runs exactly this).
#   bash scripts/test.sh [pytest arguments]
# - pip: the package with its test extras (tensorstore, cloud-volume, moto, playwright, ...);
# - Debian packages: chromium (the real viewer is driven headless by Playwright, no browser
#   download) and nginx (the generated server block is run by a real nginx), installed when missing:
#   as root with apt-get, else with sudo, else a one-line message saying what to install.
#   Packages must not start services here: the tests start their own nginx and servers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
{ [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; } || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ngconvert tests: install ${need[*]} with your system's package manager, then run this again" >&2
        exit 2
    fi
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "ngconvert tests: as root, run 'apt-get install -y --no-install-recommends ${need[*]}', then this again" >&2
        exit 2
    fi
    NO_START=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        NO_START=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ -n "$NO_START" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi

python3 -m pip install --quiet -e '.[test]'
python3 -m pytest -q "$@"
