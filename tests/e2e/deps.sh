#!/bin/bash
# Installs what tests/e2e/run.sh needs on a Debian host (run as root).
# .ci/run calls it before the tests.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# systemd-container: systemd-nspawn. debootstrap: the bookworm rootfs.
# lintian: checks the .deb. dpkg-dev: dpkg-shlibdeps. binutils: strip.
# util-linux: nsenter, findmnt. procps: pgrep.
apt-get install -y -qq --no-install-recommends \
    systemd-container debootstrap lintian dpkg-dev binutils util-linux procps \
    gzip xz-utils ca-certificates >/dev/null
echo "e2e deps: $(systemd-nspawn --version | head -n1), debootstrap $(dpkg-query -W -f='${Version}' debootstrap), lintian $(dpkg-query -W -f='${Version}' lintian)"
