#!/usr/bin/env bash
# Runs the fleet example on this machine until Ctrl-C: three gateway hosts (nginx +
# resty.shmetrics.gateway + a mock upstream, each its own prefix, ports and region
# file), VictoriaMetrics on :8428 and Prometheus on :9090 with prometheus.yml,
# rules/ and targets/ from this directory. Needs `make build` (libshmetrics.so) and
# Debian's nginx, libnginx-mod-http-lua, prometheus and victoria-metrics (`make deps`).
#
#   host   gateway  mock   metrics (targets/hosts.json)
#   gw-a   8180     8181   9145
#   gw-b   8280     8281   9146
#   gw-c   8380     8381   9147
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
lib_dir=${SHMETRICS_LIB_DIR:-$repo/target/release}

if [ ! -f "$lib_dir/libshmetrics.so" ]; then
    echo "fleet: $lib_dir/libshmetrics.so not found; run 'make build'" >&2
    exit 1
fi
for p in 8180 8181 9145 8280 8281 9146 8380 8381 9147 8428 9090; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "fleet: port $p is in use" >&2
        exit 1
    fi
done

work=$(mktemp -d /tmp/shmetrics-fleet.XXXXXX)
chmod 755 "$work"      # nginx workers (nobody) read the Lua module and library there
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -f /dev/shm/shmetrics-fleet-example-gw-?
    echo "fleet: stopped; logs and data in $work (remove it when done)"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

mkdir -p "$work/lua" "$work/lib"
cp -r "$repo/lua/." "$work/lua/"
cp "$lib_dir/libshmetrics.so" "$work/lib/"

i=0
for host in gw-a gw-b gw-c; do
    i=$((i + 1))
    prefix=$work/$host
    mkdir -p "$prefix/logs" "$prefix/conf" "$prefix/tmp"
    sed -e "s|{{PREFIX}}|$prefix|g" \
        -e "s|{{WORKERS}}|2|g" \
        -e "s|{{LUA_DIR}}|$work/lua|g" \
        -e "s|{{LIB_DIR}}|$work/lib|g" \
        -e "s|{{SHM_PATH}}|/dev/shm/shmetrics-fleet-example-$host|g" \
        -e "s|{{PORT}}|8${i}80|g" \
        -e "s|{{MOCK_PORT}}|8${i}81|g" \
        -e "s|{{METRICS_PORT}}|914$((i + 4))|g" \
        "$here/gateway.conf" > "$prefix/conf/nginx.conf"
    /usr/sbin/nginx -p "$prefix" -e "$prefix/logs/error.log" -c "$prefix/conf/nginx.conf" \
        -g 'daemon off;' &
    pids+=($!)
done

/usr/bin/victoria-metrics -storageDataPath="$work/victoria-metrics" -httpListenAddr=127.0.0.1:8428 \
    -retentionPeriod=1y > "$work/victoria-metrics.log" 2>&1 &
pids+=($!)
/usr/bin/prometheus --config.file="$here/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
    --storage.tsdb.retention.time=2d --web.listen-address=127.0.0.1:9090 > "$work/prometheus.log" 2>&1 &
pids+=($!)

cat <<MSG
fleet: three gateway hosts, Prometheus and VictoriaMetrics; everything under $work

  J='Content-Type: application/json'
  curl -H "\$J" -H 'X-Namespace: wechat' http://127.0.0.1:8180/v1/chat/completions \\
       -d '{"model":"gpt-4o","max_tokens":40,"messages":[]}'
  curl -H "\$J" http://127.0.0.1:8280/v1/embeddings -d '{"model":"text-embedding-3-small","input":"hi"}'
  curl -H "\$J" -H 'X-Mock-Status: 500' http://127.0.0.1:8380/v1/chat/completions -d '{"model":"gpt-4o"}'

After a scrape (15 s), the same query on both servers:
  Q='sum by (host) (http_requests_total)'
  curl -s http://127.0.0.1:9090/api/v1/query --data-urlencode "query=\$Q"     # Prometheus
  curl -s http://127.0.0.1:8428/api/v1/query --data-urlencode "query=\$Q"     # VictoriaMetrics
VictoriaMetrics shows what arrived about 30 s late (-search.latencyOffset).

Ctrl-C stops everything.
MSG
wait
