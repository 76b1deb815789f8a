#!/usr/bin/env bash
# Builds the Debian package with `cargo deb`, installs it with dpkg, and checks what was
# installed: the binary runs, the ssehub user exists and can read its config, and the
# units pass `systemd-analyze verify` and rate at most 2.0 with
# `systemd-analyze security --offline=true`. Needs root, cargo-deb and systemd-analyze
# (.ci/run installs the last two when missing). Safe to run again: the package is
# reinstalled over itself.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo deb --quiet
deb=$(ls -t target/debian/ssehub_*.deb | head -n 1)
echo "package: $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Installed-Size\):/  \1:/p'
dpkg-deb --contents "$deb" | awk '{print "  " $6}'
dpkg -i "$deb"

/usr/bin/ssehub --version
getent passwd ssehub
# The service user reads the installed config (root:ssehub 0640).
if command -v runuser >/dev/null; then
  runuser -u ssehub -- /usr/bin/ssehub check-config /etc/ssehub/ssehub.toml
  runuser -u ssehub -- /usr/bin/ssehub check-config /etc/ssehub/cluster.toml
fi

units=(/lib/systemd/system/ssehub.service /lib/systemd/system/ssehub.socket)
# verify prints problems and exits non-zero on errors; warnings are shown too.
systemd-analyze verify "${units[@]}"
# The cluster template, as instance 0 (the template itself cannot be verified).
ln -sf /lib/systemd/system/ssehub@.service /tmp/ssehub@0.service
systemd-analyze verify /tmp/ssehub@0.service
cluster_score=$(systemd-analyze security --offline=true /tmp/ssehub@0.service 2>&1 |
  sed -n 's/.*Overall exposure level for ssehub@0.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security --offline=true ssehub@0.service: exposure $cluster_score"
systemd-analyze security --offline=true --threshold=20 /tmp/ssehub@0.service >/dev/null
rm -f /tmp/ssehub@0.service
score=$(systemd-analyze security --offline=true /lib/systemd/system/ssehub.service 2>&1 |
  sed -n 's/.*Overall exposure level for ssehub.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security --offline=true: exposure $score"
# --threshold is the exposure times ten: 20 means at most 2.0.
systemd-analyze security --offline=true --threshold=20 /lib/systemd/system/ssehub.service \
  >/dev/null
