#!/usr/bin/env bash
# Install the real Autobahn TestSuite (wstest, Python 2.7 only) into a cached
# Debian bullseye root and print the path of a `wstest` launcher for the host.
#
# Why a root: bookworm has no python2; bullseye still ships python2.7.
# Why a cache outside the work tree: the root is ~0.5 GB and takes minutes to
# build; every later call (and every clone of the repo) reuses it in seconds.
#
# Usage: conformance/install_wstest.sh        -> prints $CACHE/bin/wstest
# Env:   IMPROTO_CACHE          cache folder (default: $HOME/.cache/improto)
#        IMPROTO_DEBIAN_MIRROR  Debian mirror URL (default: read from the
#                               host's apt sources at run time)
#        PYTHON                 host Python whose pip downloads the wheels
#                               (default: python3)
# Needs root (debootstrap, chroot). All progress goes to stderr; stdout is
# only the launcher path, so callers can do WSTEST=$(install_wstest.sh).
set -euo pipefail
# chroot, debootstrap and friends live in sbin, which a CI PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOCK="$HERE/wstest-requirements.txt"
CACHE="${IMPROTO_CACHE:-$HOME/.cache/improto}"
ROOT="$CACHE/bullseye"
WHEELS="$CACHE/wstest-wheels"
LAUNCHER="$CACHE/bin/wstest"
PYTHON="${PYTHON:-python3}"
# Bump when the recipe below changes in a way the lock hash cannot see.
RECIPE_VERSION=1
# Debian packages inside the root: the interpreter, plus a compiler and headers
# for the two C speedups (wsaccel, ujson) that have no cp27 wheels.
ROOT_PACKAGES="python2.7,libpython2.7-dev,gcc,libc6-dev"

log() { printf '[install_wstest +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The stamp records what the root was built from; a matching stamp means the
# root is complete (it is written last), so a second call is a no-op.
wanted_stamp() {
    printf 'recipe=%s lock=%s\n' "$RECIPE_VERSION" "$(sha256sum "$LOCK" | cut -d' ' -f1)"
}

root_is_current() {
    [[ -f "$ROOT/.improto-wstest-stamp" ]] &&
        [[ "$(cat "$ROOT/.improto-wstest-stamp")" == "$(wanted_stamp)" ]] &&
        chroot "$ROOT" /usr/bin/python2.7 -c 'import autobahntestsuite, wsaccel' 2>/dev/null
}

# Read the Debian mirror from the host's apt sources (deb822 or one-line
# format), so no host name is ever written into the repo.
debian_mirror() {
    if [[ -n "${IMPROTO_DEBIAN_MIRROR:-}" ]]; then
        echo "$IMPROTO_DEBIAN_MIRROR"; return
    fi
    "$PYTHON" - <<'EOF'
import glob, re, sys
entries = []  # (uri, suite) of every enabled deb source
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
        if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
            entries += [(u, s) for u in fields.get("URIs", "").split() for s in fields.get("Suites", "").split()]
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            entries.append((m.group(1), m.group(2)))
# The main archive: a Debian URI serving a plain release (bookworm), not
# bookworm-security / bookworm-updates nor a third-party repository.
main = [u for u, s in entries if "debian" in u and "security" not in u and "-" not in s]
if not main:
    sys.exit("no Debian main archive in the host's apt sources; set IMPROTO_DEBIAN_MIRROR")
print(main[0].rstrip("/"))
EOF
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null && return
    log "installing debootstrap on the host"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
}

# Build the bare root once; built in a temp folder and renamed at the end so
# an interrupted run never leaves a half root that looks usable.
ensure_root() {
    if chroot "$ROOT" /usr/bin/python2.7 -c 'import sys' 2>/dev/null &&
        chroot "$ROOT" /usr/bin/gcc --version >/dev/null 2>&1; then
        log "reusing Debian bullseye root at $ROOT"
        return
    fi
    ensure_debootstrap
    local mirror tmp
    mirror="$(debian_mirror)"
    tmp="$ROOT.partial"
    rm -rf "$tmp" "$ROOT"
    mkdir -p "$CACHE"
    log "debootstrap bullseye into $tmp (mirror read from host apt sources)"
    debootstrap --variant=minbase --include="$ROOT_PACKAGES" \
        bullseye "$tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $CACHE/debootstrap.log"
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    mv "$tmp" "$ROOT"
}

# The host's pip downloads (it knows this machine's index and certificates);
# the root never needs network access.
download_wheels() {
    log "downloading the pinned py2.7 wheels/sdists with the host's pip"
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check \
        --no-deps --require-hashes \
        --python-version 2.7 --implementation cp --abi cp27mu \
        --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform linux_x86_64 \
        -r "$LOCK" -d "$WHEELS" 2>&1 |
        { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
}

install_into_root() {
    local inroot=/opt/improto-wheels
    rm -rf "${ROOT:?}$inroot"
    mkdir -p "$ROOT$inroot"
    cp "$WHEELS"/* "$ROOT$inroot/"
    cp "$LOCK" "$ROOT$inroot/requirements.txt"
    local pipwhl
    pipwhl="$(cd "$ROOT$inroot" && ls pip-20.3.4-*.whl)"
    # A clean environment: the host's PIP_* settings point at host paths.
    local -a run=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1 PIP_NO_INDEX=1 PIP_FIND_LINKS="$inroot"
        "$(command -v chroot)" "$ROOT")
    log "installing pip 20.3.4 from its wheel inside the root"
    "${run[@]}" /usr/bin/python2.7 "$inroot/$pipwhl/pip" install --quiet \
        "$inroot/$pipwhl" >&2
    log "installing setuptools and wheel (build tools for the sdists)"
    "${run[@]}" /usr/bin/python2.7 -m pip install --quiet \
        setuptools==44.0.0 wheel==0.37.1 >&2
    log "installing autobahntestsuite and its pinned dependencies"
    "${run[@]}" /usr/bin/python2.7 -m pip install --quiet --no-deps \
        --no-build-isolation --require-hashes -r "$inroot/requirements.txt" >&2
    "${run[@]}" /usr/bin/python2.7 -m pip check >&2 || die "pip check failed inside the root"
    rm -rf "${ROOT:?}$inroot" "$ROOT/root/.cache/pip"
}

# The launcher runs wstest inside the root. It enters a private mount
# namespace and bind-mounts the caller's working directory at the same path
# inside the root, so relative and absolute paths under $PWD (spec file,
# report dir) mean the same on both sides, and the mount disappears with the
# process even if it is killed.
write_launcher() {
    mkdir -p "$(dirname "$LAUNCHER")"
    cat >"$LAUNCHER.tmp" <<EOF
#!/bin/sh
# Generated by conformance/install_wstest.sh: runs wstest (Python 2.7) in the
# Debian bullseye root $ROOT.
# The current directory is visible inside at the same path; keep the spec file
# and the report folder under it.
set -e
ROOT='$ROOT'
CHROOT='$(command -v chroot)'
UNSHARE='$(command -v unshare)'
EOF
    cat >>"$LAUNCHER.tmp" <<'EOF'
case "$PWD" in /) echo "wstest launcher: run it from a folder other than /" >&2; exit 2;; esac
# shellcheck disable=SC2016  # the inner script expands its own arguments
exec "$UNSHARE" --mount --propagation private -- /bin/sh -c '
    set -e
    ROOT="$1"; CHROOT="$2"; shift 2
    mkdir -p "$ROOT$PWD"
    mount --bind "$PWD" "$ROOT$PWD"
    exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
        PYTHONUNBUFFERED=1 "$CHROOT" "$ROOT" /bin/sh -c "cd \"\$0\" && exec /usr/local/bin/wstest \"\$@\"" "$PWD" "$@"
' sh "$ROOT" "$CHROOT" "$@"
EOF
    chmod +x "$LAUNCHER.tmp"
    mv "$LAUNCHER.tmp" "$LAUNCHER"
}

main() {
    [[ "$(id -u)" == 0 ]] || die "needs root (debootstrap and chroot)"
    # The lock's hashes are for the x86_64 (manylinux1) cp27mu wheels.
    [[ "$(uname -m)" == x86_64 ]] || die "x86_64 only: wstest-requirements.txt pins x86_64 wheels"
    mkdir -p "$CACHE"
    # One installer at a time per cache (parallel tox envs, two terminals).
    exec 9>"$CACHE/.install.lock"
    flock 9
    if root_is_current; then
        write_launcher # cheap, and keeps it in step with this script
        echo "$LAUNCHER"
        return
    fi
    rm -f "$ROOT/.improto-wstest-stamp"
    ensure_root
    download_wheels
    install_into_root
    write_launcher
    chroot "$ROOT" /usr/bin/python2.7 -c 'import autobahntestsuite, wsaccel' ||
        die "wstest does not import inside the root"
    wanted_stamp >"$ROOT/.improto-wstest-stamp"
    log "done: $(du -sh "$ROOT" | cut -f1) in $ROOT"
    echo "$LAUNCHER"
}

main "$@"
