#!/usr/bin/env bash
# `make demo`: renders nginx-test-conf/demo.conf (a sample LLM gateway) into a temp
# prefix and runs nginx in the foreground until Ctrl-C, showing its error log.
#   DEMO_PORT (8080), DEMO_MOCK_PORT (8081), DEMO_METRICS_PORT (9145), DEMO_WORKERS (2),
#   SHMETRICS_LIB_DIR
set -euo pipefail
cd "$(dirname "$0")/.."

port=${DEMO_PORT:-8080}
mock_port=${DEMO_MOCK_PORT:-8081}
metrics_port=${DEMO_METRICS_PORT:-9145}
workers=${DEMO_WORKERS:-2}
lib_dir=${SHMETRICS_LIB_DIR:-$PWD/target/release}
nginx=/usr/sbin/nginx

if [ ! -f "$lib_dir/libshmetrics.so" ]; then
    echo "demo: $lib_dir/libshmetrics.so not found; run 'make build'" >&2
    exit 1
fi
for p in "$port" "$mock_port" "$metrics_port"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "demo: port $p is in use; stop what listens there or set DEMO_PORT / DEMO_MOCK_PORT / DEMO_METRICS_PORT" >&2
        exit 1
    fi
done

prefix=$(mktemp -d /tmp/shmetrics-demo.XXXXXX)
shm=/dev/shm/shmetrics-demo-$$
tail_pid=
cleanup() {
    [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
    rm -rf "$prefix"
    rm -f "$shm"
}
trap cleanup EXIT

# Workers run as nobody when the master is root: give them a readable copy of the Lua
# module and the library (a rebuild while the demo runs then cannot disturb it).
chmod 755 "$prefix"
mkdir -p "$prefix/logs" "$prefix/conf" "$prefix/tmp" "$prefix/lib"
cp -r lua "$prefix/lua"
cp "$lib_dir/libshmetrics.so" "$prefix/lib/"
sed -e "s|{{PREFIX}}|$prefix|g" \
    -e "s|{{PORT}}|$port|g" \
    -e "s|{{METRICS_PORT}}|$metrics_port|g" \
    -e "s|{{MOCK_PORT}}|$mock_port|g" \
    -e "s|{{WORKERS}}|$workers|g" \
    -e "s|{{LUA_DIR}}|$prefix/lua|g" \
    -e "s|{{LIB_DIR}}|$prefix/lib|g" \
    -e "s|{{SHM_PATH}}|$shm|g" \
    nginx-test-conf/demo.conf > "$prefix/conf/nginx.conf"
if grep -n '{{' "$prefix/conf/nginx.conf"; then
    echo "demo: placeholders left in nginx-test-conf/demo.conf (above)" >&2
    exit 1
fi

args=(-p "$prefix" -e "$prefix/logs/error.log" -c "$prefix/conf/nginx.conf")
"$nginx" -t -q "${args[@]}"

gw=http://127.0.0.1:$port
cat <<MSG

shmetrics demo: a sample LLM gateway in nginx ($workers workers), config rendered from
nginx-test-conf/demo.conf into $prefix

  gateway   $gw
  metrics   http://127.0.0.1:$metrics_port/metrics
  status    http://127.0.0.1:$metrics_port/status   (live page: open it in a browser)

Try (the gateway proxies to a mock OpenAI-compatible upstream on :$mock_port):
  J='Content-Type: application/json'
  curl -H "\$J" -H 'X-Namespace: wechat' $gw/v1/chat/completions \\
       -d '{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}'
  curl -N -H "\$J" -H 'X-Namespace: alipay' $gw/v1/chat/completions \\
       -d '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}'
  curl -H "\$J" $gw/v1/embeddings -d '{"model":"text-embedding-3-small","input":"hello"}'
  curl -H "\$J" -H 'X-Mock-Status: 500' $gw/v1/chat/completions -d '{"model":"gpt-4o","messages":[]}'
  curl -H "\$J" -H 'X-Backend: down' $gw/v1/chat/completions -d '{"model":"gpt-4o","messages":[]}'
  curl -s http://127.0.0.1:$metrics_port/metrics | grep -E '^(model|errors|namespace|gateway)'
  curl -s http://127.0.0.1:$metrics_port/metrics.json

nginx runs in the foreground; its error log follows. Ctrl-C stops it.

MSG

touch "$prefix/logs/error.log"
tail -n 0 -F "$prefix/logs/error.log" &
tail_pid=$!
# Ctrl-C reaches nginx too (same process group): SIGINT is its fast shutdown.
status=0
"$nginx" "${args[@]}" -g 'daemon off;' || status=$?
echo "demo: nginx stopped"
exit $status
