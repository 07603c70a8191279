#!/bin/bash
# Builds the warden .deb with dpkg-deb (no cargo-deb: installing it costs
# minutes of CI on two cores). Output: target/deb/warden_VERSION_ARCH.deb, and
# its path on stdout's last line.
#
#   packaging/build-deb.sh                  release build of the binary, then package
#   WARDEN_BIN=/path/to/warden packaging/build-deb.sh   package a prebuilt binary
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}
out=$target/deb
stage=$out/stage

# The workspace's version (root Cargo.toml, [workspace.package]).
version=$(sed -n '/^\[workspace\.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "build-deb: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)

if [ -z "${WARDEN_BIN:-}" ]; then
    cargo build --release --locked --bin warden >&2
    WARDEN_BIN=$target/release/warden
fi
[ -x "$WARDEN_BIN" ] || { echo "build-deb: $WARDEN_BIN is not an executable" >&2; exit 1; }

rm -rf "$stage"
install -d "$stage/DEBIAN"
install -D -m 0755 "$WARDEN_BIN" "$stage/usr/bin/warden"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/warden"
install -D -m 0644 systemd/warden.service "$stage/lib/systemd/system/warden.service"
install -D -m 0644 systemd/warden-web.service "$stage/lib/systemd/system/warden-web.service"
install -D -m 0644 systemd/warden-fleet.service "$stage/lib/systemd/system/warden-fleet.service"
install -D -m 0644 udev/60-warden-watchdog.rules "$stage/lib/udev/rules.d/60-warden-watchdog.rules"
install -D -m 0644 packaging/warden.tmpfiles "$stage/usr/lib/tmpfiles.d/warden.conf"
# 0640: agents' `env` tables may hold secrets (the daemon refuses a
# world-readable config with env); postinst gives it group warden.
install -D -m 0640 packaging/warden.toml "$stage/etc/warden/warden.toml"
install -D -m 0644 packaging/debian/copyright "$stage/usr/share/doc/warden/copyright"
install -D -m 0644 packaging/debian/changelog "$stage/usr/share/doc/warden/changelog"
install -D -m 0644 docs/operators.md "$stage/usr/share/doc/warden/operators.md"
install -D -m 0644 docs/broker.md "$stage/usr/share/doc/warden/broker.md"
install -D -m 0644 docs/agent-api.md "$stage/usr/share/doc/warden/agent-api.md"
install -D -m 0644 docs/web.md "$stage/usr/share/doc/warden/web.md"
install -D -m 0644 packaging/warden.1 "$stage/usr/share/man/man1/warden.1"
gzip -9n "$stage/usr/share/doc/warden/changelog" "$stage/usr/share/doc/warden/operators.md" \
    "$stage/usr/share/doc/warden/broker.md" "$stage/usr/share/doc/warden/agent-api.md" \
    "$stage/usr/share/doc/warden/web.md" \
    "$stage/usr/share/man/man1/warden.1"

for f in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$f" "$stage/DEBIAN/$f"
done
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/conffiles"

# Shared-library dependencies of the binary, as dh_shlibdeps would compute them.
shlibs_dir=$(mktemp -d)
trap 'rm -rf "$shlibs_dir"' EXIT
mkdir -p "$shlibs_dir/debian"
printf 'Source: warden\n\nPackage: warden\nArchitecture: any\n' >"$shlibs_dir/debian/control"
shlibs=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$stage/usr/bin/warden" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

cat >"$stage/DEBIAN/control" <<CONTROL
Package: warden
Version: $version
Architecture: $arch
Maintainer: Warden Maintainers <warden-maintainers@example.com>
Installed-Size: $size
Depends: $shlibs, adduser, e2fsprogs
Recommends: systemd
Section: admin
Priority: optional
Description: supervisor that runs AI agents in cgroups and halts them on demand
 warden is a privileged daemon that starts each AI agent as a child in its
 own cgroup, under a dedicated unprivileged user, and can stop all of them at
 once and completely: a stop file, a command, systemctl stop, or the death of
 the daemon itself. After any halt or crash it stays in SAFE MODE until a
 human resumes it; every command is recorded in a hash-chained audit log.
 .
 This package ships the daemon and command, a systemd unit, a udev rule for
 the hardware watchdog and a default configuration with one demo agent.
CONTROL

deb=$out/warden_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
echo "$deb"
