#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: the reference gateway, the bare
# hyper proxy (the floor: server + hyper-util pooled client, no layers) and nginx (a plain
# reverse proxy: one process, proxy_buffering off, upstream keep-alive) in front of the same
# mock, one non-streaming request at a time. Instruction counts do not depend on the machine's
# speed or on what else runs on it (kernel time is not counted), so two builds or two machines
# compare exactly.
#
#   cargo build --release --example gateway --example loadgen
#   benches/instructions.sh [REQUESTS]            # default 2000
#
# Needs valgrind (callgrind, callgrind_control); nginx is measured when it is installed
# (`apt-get install -y nginx`; NGINX=/path/to/nginx picks one). Everything listens on 127.0.0.1
# and stops by itself.
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
  # KEEP=DIR keeps the callgrind profiles (callgrind_annotate DIR/gw.*.1 shows the top costs).
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$DIR"/*.1 "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT

# A child of loadgen that serves until its stdin closes: keep a FIFO open for it. Sets PORT.
# (Not called in a `$(…)` subshell: the pids must reach PIDS, or cleanup leaves them running.)
child() { # name, args...
  local name=$1; shift
  mkfifo "$DIR/$name.in"
  sleep 100000 > "$DIR/$name.in" &
  PIDS+=($!)
  "$@" < "$DIR/$name.in" > "$DIR/$name.out" 2> "$DIR/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$DIR/$name.out" ] && break; sleep 0.1; done
  PORT=$(head -1 "$DIR/$name.out")
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

child mock "$BIN/loadgen" --serve-mock
MOCK=$PORT

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

NG_I=0
NGINX=${NGINX:-$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)}
if [ -n "$NGINX" ]; then
  NG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$DIR/nginx"
  cat > "$DIR/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log crit;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $DIR/nginx/body;
  proxy_temp_path $DIR/nginx/proxy;
  fastcgi_temp_path $DIR/nginx/fastcgi;
  uwsgi_temp_path $DIR/nginx/uwsgi;
  scgi_temp_path $DIR/nginx/scgi;
  keepalive_requests 100000000;
  upstream mock { server 127.0.0.1:$MOCK; keepalive 16; }
  server {
    listen 127.0.0.1:$NG_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
  valgrind --tool=callgrind --callgrind-out-file="$DIR/ng.%p" \
    "$NGINX" -p "$DIR/nginx" -e "$DIR/nginx/error.log" -c "$DIR/nginx/nginx.conf" \
    -g 'daemon off; master_process off;' > "$DIR/ng.out" 2> "$DIR/ng.err" &
  NG=$!
  PIDS+=($NG)
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$NG_PORT") 2>/dev/null && break; sleep 0.1; done
  NG_I=$(count "$NG" "127.0.0.1:$NG_PORT" "$DIR/ng")
else
  echo "nginx not found: measuring without it (apt-get install -y nginx)" >&2
fi

awk -v n="$N" -v g="$GW_I" -v p="$PX_I" -v x="$NG_I" 'BEGIN {
  printf "user-space instructions per request (callgrind, %d non-streaming requests, concurrency 1)\n", n
  if (x > 0) printf "  nginx:                  %8.0f\n", x / n
  printf "  bare proxy (the floor): %8.0f\n", p / n
  printf "  gateway:                %8.0f  (%.2fx the floor, +%.0f)\n", g / n, g / p, (g - p) / n
  if (x > 0) printf "  gateway / nginx:        %8.2fx  (bare proxy / nginx: %.2fx)\n", g / x, p / x
}'
