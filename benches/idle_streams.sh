#!/usr/bin/env bash
# Memory per idle open stream (issue 12 "Scale", issue 14 acceptance 7): N streams held open
# through tollgate prod (virtual key, rpm limit, JSONL usage file), tollgate lean, the bare
# hyper proxy (the floor) and nginx (proxy_buffering off), each in front of an upstream that
# sends the SSE head and first event, then nothing until told to finish; VmRSS before and after
# opening them, the p50 of a json loop at concurrency 1 without and with them, then every
# stream finished and counted.
#
#   benches/idle_streams.sh [N] [loadgen flags]     # N defaults to 10000; e.g. --cell-secs 3
#
# The process in between holds two sockets per stream: the open-file limit is raised to the
# hard limit first (the children inherit it), and N is capped at (limit - 64) / 2.
# Installs nginx with apt-get when it is missing, builds the gateway and the harness (release).
# Everything listens on 127.0.0.1 and stops by itself. Not run in CI (a load test).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
[ $# -gt 0 ] && shift
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "nginx is missing: apt-get install -y nginx" >&2
  apt-get install -y nginx >&2 || { apt-get update >&2 && apt-get install -y nginx >&2; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ulimit -n "$(ulimit -Hn)" || true
cargo build --release --example gateway --example loadgen
exec target/release/examples/loadgen --idle-streams "$N" --nginx "$NGINX" --gateway-log warn "$@"
