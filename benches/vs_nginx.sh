#!/usr/bin/env bash
# The load harness against nginx, in one run: direct to the mock, nginx (a plain reverse proxy),
# the bare hyper proxy (the floor), tollgate's production path (virtual key, an rpm limit, the
# JSONL usage file) and its lean path (auth off, no usage file); json at concurrency 1 and 32,
# 23-event streams at concurrency 1 and 32; alternating rounds. See BENCHMARKS.md.
#
#   benches/vs_nginx.sh [loadgen flags]     # e.g. --cell-secs 3 --rounds 5
#
# Installs nginx with apt-get when it is missing, builds the gateway and the harness (release),
# then runs `loadgen --vs-nginx`. Everything listens on 127.0.0.1 and stops by itself. Not run
# in CI (a load test); `cargo bench --no-run` and `cargo build --examples` keep it compiling.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "nginx is missing: apt-get install -y nginx" >&2
  apt-get install -y nginx >&2 || { apt-get update >&2 && apt-get install -y nginx >&2; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --example gateway --example loadgen
exec target/release/examples/loadgen --vs-nginx --nginx "$NGINX" "$@"
