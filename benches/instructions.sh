#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: the reference gateway and the bare
# hyper proxy (the floor: server + hyper-util pooled client, no layers) in front of the same
# mock, one non-streaming request at a time. Instruction counts do not depend on the machine's
# speed or on what else runs on it (kernel time is not counted), so two builds or two machines
# compare exactly.
#
#   cargo build --release --example gateway --example loadgen
#   benches/instructions.sh [REQUESTS]            # default 2000
#
# Needs valgrind (callgrind, callgrind_control). Everything listens on 127.0.0.1 and stops by
# itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
BIN=target/release/examples
for b in gateway loadgen; do
  [ -x "$BIN/$b" ] || { echo "build first: cargo build --release --example gateway --example loadgen" >&2; exit 2; }
done
command -v callgrind_control >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }

DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# A child of loadgen that serves until its stdin closes: keep a FIFO open for it.
child() { # name, args...
  local name=$1; shift
  mkfifo "$DIR/$name.in"
  sleep 100000 > "$DIR/$name.in" &
  PIDS+=($!)
  "$@" < "$DIR/$name.in" > "$DIR/$name.out" 2> "$DIR/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$DIR/$name.out" ] && break; sleep 0.1; done
  head -1 "$DIR/$name.out"
}

# Count instructions of PID (under callgrind) over N requests to ADDR, after a warm-up.
count() { # pid, addr, out-prefix
  "$BIN/loadgen" --drive "$2" --requests 200 > /dev/null
  callgrind_control -z "$1" > /dev/null 2>&1
  "$BIN/loadgen" --drive "$2" --requests "$N" > /dev/null
  callgrind_control -d "$1" > /dev/null 2>&1
  sleep 0.3
  local f
  f=$(ls "$3".*.1)
  callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}'
}

MOCK=$(child mock "$BIN/loadgen" --serve-mock)

cat > "$DIR/gateway.toml" <<EOF
[auth]
enabled = false
[usage]
jsonl = ""
[providers.mock]
kind = "openai"
base_url = "http://127.0.0.1:$MOCK/v1"
[models.ok]
targets = [{ provider = "mock", model = "ok" }]
EOF
RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$DIR/gw.%p" \
  "$BIN/gateway" --config "$DIR/gateway.toml" --listen 127.0.0.1:0 > "$DIR/gw.out" 2> "$DIR/gw.err" &
GW=$!
PIDS+=($GW)
for _ in $(seq 300); do grep -q listening "$DIR/gw.out" 2>/dev/null && break; sleep 0.1; done
GW_ADDR=$(sed -n 's|.*http://||p' "$DIR/gw.out" | head -1)
GW_I=$(count "$GW" "$GW_ADDR" "$DIR/gw")

mkfifo "$DIR/proxy.in"
sleep 100000 > "$DIR/proxy.in" &
PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file="$DIR/px.%p" \
  "$BIN/loadgen" --serve-proxy "$MOCK" < "$DIR/proxy.in" > "$DIR/proxy.out" 2> "$DIR/proxy.err" &
PX=$!
PIDS+=($PX)
for _ in $(seq 300); do [ -s "$DIR/proxy.out" ] && break; sleep 0.1; done
PX_I=$(count "$PX" "127.0.0.1:$(head -1 "$DIR/proxy.out")" "$DIR/px")

awk -v n="$N" -v g="$GW_I" -v p="$PX_I" 'BEGIN {
  printf "user-space instructions per request (callgrind, %d non-streaming requests, concurrency 1)\n", n
  printf "  bare proxy (the floor): %8.0f\n", p / n
  printf "  gateway:                %8.0f  (%.2fx the floor, +%.0f)\n", g / n, g / p, (g - p) / n
}'
