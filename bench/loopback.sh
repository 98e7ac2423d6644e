#!/bin/bash
# Loopback throughput through vringswitch and through testpmd io-fwd acting as the switch,
# interleaved in one run (the machine is noisy: compare within a run, as ratios).
#
#   bench/loopback.sh [SECONDS] [ROUNDS] [SIZES...]      default: 10 2 64 1518
#
# With VRINGSWITCH_BIN=PATH, that binary is measured instead of a fresh release build.
# With PERF_OUT=FILE, the worker's core is sampled with perf (cpu-clock) during each
# vringswitch run into FILE.SIZE; build with CARGO_PROFILE_RELEASE_DEBUG=true for symbols.
#
# A generator testpmd owns two virtio_user ports (mac forwarding, --tx-first) and its
# forwarding lcore runs on CPU 0; the switch under test polls on CPU 1. Frames circulate
# gen0 -> switch -> gen1 -> switch -> gen0; per-port Rx-pps is the figure. Needs root,
# dpdk-dev and hugepages (scripts/test.sh sets them up).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}; ROUNDS=${2:-2}; shift $(( $# > 2 ? 2 : $# )) || true
SIZES=("${@:-64 1518}"); [[ $# -eq 0 ]] && SIZES=(64 1518)
W=$(mktemp -d /tmp/vsbench.XXXX)
trap 'pkill -f "file-prefix vsb" 2>/dev/null; pkill -f "$W/vs.toml" 2>/dev/null; rm -f /dev/hugepages/vsb*; rm -rf "$W"' EXIT
# VRINGSWITCH_BIN=PATH benchmarks that binary instead (e.g. an older build, for an A/B).
if [[ -n ${VRINGSWITCH_BIN:-} ]]; then
    BIN=$VRINGSWITCH_BIN
else
    cargo build --release --bin vringswitch -q
    BIN=target/release/vringswitch
fi
API_PORT=${API_PORT:-19180}

cat > "$W/vs.toml" <<TOML
[dataplane]
cores = [1]
[[bridges]]
name = "br0"
[[ports]]
name = "vm1"
bridge = "br0"
type = "vhost-user"
socket = "$W/a.sock"
mode = "server"
queues = 1
[[ports]]
name = "vm2"
bridge = "br0"
type = "vhost-user"
socket = "$W/b.sock"
mode = "server"
queues = 1
TOML

# Runs the generator for SECS against sockets $W/a.sock $W/b.sock; prints the median of
# the per-port Rx-pps samples of the second half of the run, in Mpps (port 0 then 1).
generate() {
    local size=$1 extra=${2:-}
    (sleep "$SECS"; echo) | timeout -s INT $((SECS + 30)) stdbuf -oL dpdk-testpmd \
        -l 1,0 --main-lcore 1 --no-pci --single-file-segments -m 512 --file-prefix vsbgen \
        --vdev "net_virtio_user0,path=$W/a.sock,queues=1,mac=02:00:00:00:00:01$extra" \
        --vdev "net_virtio_user1,path=$W/b.sock,queues=1,mac=02:00:00:00:00:02$extra" \
        -- --nb-cores=1 --forward-mode=mac --eth-peer=0,02:00:00:00:00:02 \
        --eth-peer=1,02:00:00:00:00:01 --tx-first --txpkts="$size" --stats-period 1 \
        2>/dev/null > "$W/gen.log" || true
    python3 - "$W/gen.log" <<'PY'
import re, statistics, sys
text = open(sys.argv[1]).read()
blocks = text.split("Port statistics")
per_port = {0: [], 1: []}
for b in blocks[1:]:
    for port, body in re.findall(r"NIC statistics for port (\d)\s+#+(.*?)#{10}", b, re.S):
        m = re.search(r"Rx-pps:\s+(\d+)", body)
        if m:
            per_port[int(port)].append(int(m.group(1)))
out = []
for p in (0, 1):
    # Skip zero samples (before traffic starts, and while testpmd tears down its ports after
    # stopping) and the first non-zero one (warm-up).
    s = [x for x in per_port[p] if x > 0][1:] or [0]
    out.append(statistics.median(s) / 1e6)
print(" ".join(f"{x:.3f}" for x in out))
if not all(out):
    print("no Rx-pps measured; generator output ends with:", file=sys.stderr)
    print("\n".join(text.splitlines()[-15:]), file=sys.stderr)
PY
}

# Prints "Mpps0 Mpps1 busy-cycles-per-packet" (the last from the switch's own accounting).
run_vringswitch() {
    "$BIN" --config "$W/vs.toml" --api 127.0.0.1:$API_PORT 2>"$W/vs.log" &
    local pid=$!
    for _ in $(seq 100); do [[ -S $W/a.sock && -S $W/b.sock ]] && break; sleep 0.05; done
    local mpps perf_pid=
    if [[ -n ${PERF_OUT:-} ]]; then
        # Samples of the worker's CPU (cpu-clock: a software event, for machines without
        # hardware counters) over the middle of the run.
        (sleep 3; exec perf record -q -e cpu-clock -F 4999 -g -C 1 -o "$PERF_OUT.$1" -- sleep $((SECS - 4))) \
            >/dev/null 2>&1 &
        perf_pid=$!
    fi
    mpps=$(generate "$1")
    [[ -n $perf_pid ]] && wait "$perf_pid"
    local cpp
    cpp=$(curl -s "127.0.0.1:$API_PORT/v1/stats" | python3 -c '
import json, sys
w = json.load(sys.stdin)["workers"][0]
print(round(w["busy_cycles"] / w["packets"]) if w["packets"] else 0)')
    kill -TERM $pid; wait $pid 2>/dev/null || true
    echo "$mpps $cpp"
}

run_testpmd_switch() {
    rm -f "$W/a.sock" "$W/b.sock"
    (sleep $((SECS + 15)); echo) | timeout -s INT $((SECS + 40)) dpdk-testpmd -l 0,1 --main-lcore 0 \
        --no-pci --no-huge -m 1024 --file-prefix vsbsw \
        --vdev "net_vhost0,iface=$W/a.sock" --vdev "net_vhost1,iface=$W/b.sock" \
        -- --nb-cores=1 --forward-mode=io --record-core-cycles > "$W/sw.log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do [[ -S $W/a.sock && -S $W/b.sock ]] && break; sleep 0.05; done
    sleep 3
    local mpps
    mpps=$(generate "$1")
    kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    rm -f "$W/a.sock" "$W/b.sock"
    # testpmd prints its forwarding core's cycles per packet when it stops.
    local cpp
    cpp=$(grep -o 'CPU cycles/packet=[0-9.]*' "$W/sw.log" | tail -1 | cut -d= -f2 || true)
    cp "$W/sw.log" /tmp/vsbench-last-testpmd-switch.log
    echo "$mpps ${cpp:-0}"
}

echo "| round | frame B | vringswitch Mpps/port | testpmd io-fwd Mpps/port | Mpps ratio | vringswitch busy cycles/pkt | testpmd cycles/pkt | cycles ratio |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
    for size in "${SIZES[@]}"; do
        read -r v0 v1 vc < <(run_vringswitch "$size")
        read -r t0 t1 tc < <(run_testpmd_switch "$size")
        python3 -c "
v=($v0+$v1)/2; t=($t0+$t1)/2
print(f'| $r | $size | {v:.3f} ({$v0:.3f}/{$v1:.3f}) | {t:.3f} ({$t0:.3f}/{$t1:.3f}) | {v/t if t else 0:.2f} | {$vc:.0f} | {$tc:.0f} | {$vc/$tc if $tc else 0:.2f} |')"
    done
done
