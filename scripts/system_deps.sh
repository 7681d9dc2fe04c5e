#!/usr/bin/env bash
# Install the Debian packages edge-se's tests and benchmarks need, if any is missing (idempotent).
#
#   chromium                 the report's headless-browser test
#   qemu-user(-static), debootstrap, g++-aarch64-linux-gnu, gcc, libglib2.0-dev, pkg-config, xz-utils
#                            the emulated aarch64 environment and its instruction-count plugin (make arm-emu)
#   openssh-server/-client   the ssh transport's loopback test server
#   dpkg-dev                 apt-get source (QEMU's plugin header)
#
# Needs root for apt-get (CI and these machines run as root). Without root it lists what is missing
# and exits 0: the tests that need a missing package skip with a message naming it.
set -euo pipefail
PACKAGES="chromium qemu-user qemu-user-static debootstrap g++-aarch64-linux-gnu gcc libglib2.0-dev pkg-config
xz-utils openssh-server openssh-client dpkg-dev"
missing=()
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then echo "system-deps: all present"; exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${missing[*]} (not root: install them with apt-get; tests needing them skip)" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}"
# Another apt-get (a second `make` in another clone, an unattended upgrade) may hold dpkg's lock:
# wait for it rather than fail.
lock=(-o DPkg::Lock::Timeout=600)
apt-get "${lock[@]}" update -qq
DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: done"
