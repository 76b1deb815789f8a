#!/usr/bin/env bash
# Conformance suite: real third-party SSE clients against the real ssehub binary.
#
#   bash tests/conformance/run.sh [--record] [--only CASE] [--clients browser,node,python]
#
# Installs what is missing (Debian's chromium, nginx-light and openssl; the npm packages of
# package-lock.json into tests/conformance/node_modules; httpx-sse into
# tests/conformance/.venv), builds ssehub (release), runs every case with every client and
# prints a table of case × client. Exits non-zero on any failure; `pending` (a feature the
# server does not have yet) is not a failure. --record also writes the table to
# tests/conformance/RESULTS.md (otherwise target/conformance/results.md).
# Honours CARGO_TARGET_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
out="$target_dir/conformance/results.md"
args=()
for a in "$@"; do
  if [ "$a" = "--record" ]; then out="$here/RESULTS.md"; else args+=("$a"); fi
done

need() { command -v "$1" >/dev/null 2>&1; }
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  # Packages whose maintainer scripts would start a system service (nginx) must not: the
  # suite runs its own nginx in the foreground. policy-rc.d is Debian's switch for that.
  local policy=/usr/sbin/policy-rc.d made_policy=
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || { [ -n "$made_policy" ] && rm -f "$policy"; return 1; }
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
}

echo "== conformance: prerequisites"
if [ ! -x /usr/bin/chromium ]; then echo "installing chromium"; apt_install chromium; fi
if ! need nginx && [ ! -x /usr/sbin/nginx ]; then echo "installing nginx-light"; apt_install nginx-light; fi
if ! need openssl; then apt_install openssl; fi
if ! need node || ! need npm; then
  echo "conformance: Node.js (20+) and npm are required" >&2
  exit 1
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# npm packages exactly as locked (no browser download: playwright-core never fetches one).
if ! (cd "$here" && node -e '
  const p = require("./package.json").dependencies;
  for (const [n, v] of Object.entries(p))
    if (require(`./node_modules/${n}/package.json`).version !== v) process.exit(1);' 2>/dev/null); then
  echo "installing npm packages (npm ci)"
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

# Python client in a venv of its own.
venv="$here/.venv"
if ! "$venv/bin/python" -c 'import httpx_sse' 2>/dev/null \
  || ! "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qx 'httpx-sse==0.4.3'; then
  echo "installing the Python client (venv)"
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
fi

echo "== conformance: build"
cargo build --release --quiet --bin ssehub
# A private copy, so that a rebuild during the run cannot swap the binary under the suite.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$target_dir/release/ssehub" "$work/ssehub"

echo "== conformance: run"
node "$here/suite.mjs" --bin "$work/ssehub" --chromium /usr/bin/chromium --nginx "$nginx_bin" \
  --python "$venv/bin/python" --out "$out" ${args[@]+"${args[@]}"}
