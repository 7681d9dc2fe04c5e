#!/usr/bin/env bash
# Build the aarch64 user-mode emulation environment that `device_bench` runs under QEMU.
#
#   scripts/arm_emu.sh [--deps] [STEP...]      (steps: root cpu wheels et runner plugin; default all)
#
# Everything lands in $EMU_DIR (default .arm-emu/, gitignored). Each step checks whether its
# output is already there and says "ok" (kept) or "built" (did it), so the script is idempotent
# and cheap to re-run. Nothing here runs ARM code; using the result needs no root.
#
#   --deps   install the Debian packages it needs with apt-get (root; what .ci/run does).
#
# Facts this relies on are in ../shared/PLATFORM.md ("Emulated aarch64"). Versions of the
# aarch64 wheels follow the host venv ($PY) so host and emulated runs use the same runtimes.
set -euo pipefail
cd "$(dirname "$0")/.."

EMU_DIR=${EMU_DIR:-.arm-emu}
PY=${PY:-.venv/bin/python}
SUITE=${SUITE:-bookworm}
APT_PACKAGES="qemu-user qemu-user-static debootstrap g++-aarch64-linux-gnu gcc libglib2.0-dev pkg-config xz-utils openssh-server openssh-client"

log() { echo "arm-emu: $*"; }
die() { echo "arm-emu: error: $*" >&2; exit 1; }

deps() {
    local missing=()
    for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -eq 0 ]; then log "ok     apt packages ($APT_PACKAGES)"; return; fi
    [ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "built  apt packages: installed ${missing[*]}"
}

need() { command -v "$1" >/dev/null || die "$1 not found; run: scripts/arm_emu.sh --deps (root) or install $2"; }

# The first deb URI of the machine's own apt sources (deb822 or one-line format).
mirror() {
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
    [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

step_root() {  # aarch64 Debian minbase with python3 and libstdc++, unpacked without running ARM code
    local root=$EMU_DIR/root
    if [ -x "$root/usr/bin/python3" ] && [ -e "$root/usr/lib/aarch64-linux-gnu/libstdc++.so.6" ]; then
        log "ok     $root (aarch64 Debian $SUITE with python3)"; return; fi
    need debootstrap debootstrap
    rm -rf "$root"; mkdir -p "$root"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,libstdc++6 \
        "$SUITE" "$root" "$(mirror)" >"$EMU_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $EMU_DIR/debootstrap.log"
    for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$root"; done
    rm -f "$root"/var/cache/apt/archives/*.deb
    log "built  $root ($(du -sh "$root" | cut -f1))"
}

step_cpu() {  # fake CPU description: runtimes must not read the host's x86 /proc and /sys
    local root=$EMU_DIR/root
    mkdir -p "$root/proc" "$root/sys/devices/system/cpu/cpu0/regs/identification"
    # One Neoverse-N1 core as the kernel describes it (CPU part 0xd0c); matches QEMU_CPU=neoverse-n1.
    cat >"$root/proc/cpuinfo.new" <<'EOF'
processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x3
CPU part	: 0xd0c
CPU revision	: 1

EOF
    if cmp -s "$root/proc/cpuinfo.new" "$root/proc/cpuinfo"; then rm "$root/proc/cpuinfo.new"; log "ok     fake /proc/cpuinfo (Neoverse-N1)"
    else mv "$root/proc/cpuinfo.new" "$root/proc/cpuinfo"; log "built  fake /proc/cpuinfo (Neoverse-N1)"; fi
    for f in possible present online; do echo 0 >"$root/sys/devices/system/cpu/$f"; done
    echo 0x00000000413fd0c1 >"$root/sys/devices/system/cpu/cpu0/regs/identification/midr_el1"
}

pyver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

PIP_ARM=(--disable-pip-version-check --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64
         --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64
         --python-version 3.11 --implementation cp --abi cp311)

step_wheels() {  # numpy + ai-edge-litert (and its dependencies, listed by hand) for aarch64 Python 3.11
    [ -x "$PY" ] || die "host Python $PY not found; run make setup (or set PY=)"
    local site=$EMU_DIR/site stamp
    local pkgs=(numpy=="$(pyver numpy)" ai-edge-litert=="$(pyver ai-edge-litert)"
                flatbuffers=="$(pyver flatbuffers)" backports.strenum typing-extensions)
    stamp="${pkgs[*]}"
    if [ -f "$site/.stamp" ] && [ "$(cat "$site/.stamp")" = "$stamp" ]; then log "ok     $site ($stamp)"; return; fi
    rm -rf "$site"
    "$PY" -m pip install --quiet "${PIP_ARM[@]}" --target "$site" "${pkgs[@]}"
    echo "$stamp" >"$site/.stamp"
    log "built  $site ($stamp)"
}

step_et() {  # the ExecuTorch aarch64 wheel's runtime libraries and headers (no torch needed)
    [ -x "$PY" ] || die "host Python $PY not found; run make setup (or set PY=)"
    local et=$EMU_DIR/executorch ver
    ver=$(pyver executorch)
    if [ -f "$et/.stamp" ] && [ "$(cat "$et/.stamp")" = "$ver" ]; then log "ok     $et (executorch $ver aarch64 runtime)"; return; fi
    rm -rf "$et" "$EMU_DIR/wheels"; mkdir -p "$EMU_DIR/wheels"
    "$PY" -m pip download --quiet "${PIP_ARM[@]}" --dest "$EMU_DIR/wheels" "executorch==$ver"
    "$PY" - "$EMU_DIR/wheels" "$et" <<'EOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("executorch-*.whl"))
out = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(("executorch/lib/", "executorch/include/")) or name == "executorch/version.py":
            zf.extract(name, out)
EOF
    rm -rf "$EMU_DIR/wheels"
    echo "$ver" >"$et/.stamp"
    log "built  $et (executorch $ver aarch64 runtime, $(du -sh "$et" | cut -f1))"
}

step_runner() {  # the native ExecuTorch runner, cross-compiled for aarch64
    need aarch64-linux-gnu-g++ g++-aarch64-linux-gnu
    "$PY" -m device_bench.native_build --target aarch64 --et-root "$EMU_DIR/executorch/executorch" \
        --out "$EMU_DIR/bin/et_runner" 2>&1 | sed "s/^/arm-emu: /"
}

step_plugin() {  # an instruction-counting TCG plugin for the dynamic qemu-aarch64
    need qemu-aarch64 qemu-user
    local out=$EMU_DIR/bin/libinsn.so src=device_bench/native/insn_plugin.c hdr=$EMU_DIR/qemu-include/qemu-plugin.h
    if [ ! -f "$hdr" ]; then
        # Debian ships no qemu-plugin.h: take it from the source package of the installed QEMU,
        # fetched with a private apt configuration (a deb-src list under $EMU_DIR; no root, and the
        # system's apt sources stay untouched). apt verifies the source against the signed index.
        local ver apt=$EMU_DIR/apt
        ver=$(dpkg-query -W -f='${source:Version}' qemu-user)
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/src"
        local uri; uri=$(mirror)
        printf 'deb-src %s %s main\ndeb-src %s %s-updates main\n' "$uri" "$SUITE" "$uri" "$SUITE" >"$apt/sources.list"
        grep -hE '^URIs:.*security|^deb .*security' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
            | awk '{print $2}' | head -1 | sed "s|\$| $SUITE-security main|; s|^|deb-src |" >>"$apt/sources.list" || true
        local opts=(-o "Dir::Etc::SourceList=$PWD/$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
                    -o "Dir::State::Lists=$PWD/$apt/lists" -o "Dir::Cache=$PWD/$apt/cache" -o APT::Sandbox::User=root -qq)
        apt-get "${opts[@]}" update
        (cd "$apt/src" && apt-get "${opts[@]}" source --download-only "qemu=$ver")
        mkdir -p "$(dirname "$hdr")"
        tar -xJf "$apt/src"/qemu_*.orig.tar.xz -O --wildcards '*/include/qemu/qemu-plugin.h' >"$hdr"
        rm -rf "$apt"
        log "built  $hdr (from Debian source qemu $ver)"
    fi
    if [ -f "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt "$hdr" ]; then log "ok     $out"; return; fi
    mkdir -p "$(dirname "$out")"
    # shellcheck disable=SC2046
    gcc -O2 -shared -fPIC -I"$(dirname "$hdr")" $(pkg-config --cflags glib-2.0) -o "$out" "$src"
    log "built  $out"
}

steps=()
for a in "$@"; do
    case $a in
        --deps) deps ;;
        root|cpu|wheels|et|runner|plugin) steps+=("$a") ;;
        *) die "unknown argument $a; valid: --deps root cpu wheels et runner plugin" ;;
    esac
done
[ ${#steps[@]} -gt 0 ] || [ $# -gt 0 ] || steps=(root cpu wheels et runner plugin)
mkdir -p "$EMU_DIR"
for s in "${steps[@]}"; do "step_$s"; done
[ ${#steps[@]} -eq 0 ] || log "ready in $EMU_DIR"
