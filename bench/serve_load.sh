#!/usr/bin/env bash
# Serving under load, side by side with `vgg bench` in one sitting: for the built-in model (32x32
# gray) and VGG-16 (224x224, random weights), the capacity `vgg bench --batch N` predicts, then
# `vgg serve` under closed-loop load (concurrency N and 2N) and open-loop load at 1x, 2x and 4x that
# capacity (examples/serve_load.rs), with the server's RSS before and after. Then the same open-loop
# loads against a server with a latency budget (admission by predicted wait) of BUDGET_X (1.5) times
# the no-load p99 (one closed-loop client).
# usage: bench/serve_load.sh [SECONDS]
# PIN=1: the server and `vgg bench` on core 0 with one compute thread, the load generator on core 1,
#   so that the client's threads do not take compute from the server (as on a separate client host).
# PIN=split: the server's forward passes on core 0 (`--compute-cpus 0`, one compute thread), its HTTP
#   side on core 1 next to the load generator, and `vgg bench` on core 0 with one thread.
# VGG16_DELAY_US: VGG-16's --max-queue-delay-us (default: the server's own default).
# CASES: which models (default "builtin vgg16").
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
case "${PIN:-0}" in
    1) SERVER=(taskset -c 0 env RAYON_NUM_THREADS=1) BENCH=("${SERVER[@]}") CLIENT=(taskset -c 1) THREADS=(--threads 1) ;;
    split) SERVER=(taskset -c 0,1) BENCH=(taskset -c 0 env RAYON_NUM_THREADS=1) CLIENT=(taskset -c 1)
        THREADS=(--compute-cpus 0) ;;
    *) SERVER=(env) BENCH=(env) CLIENT=(env) THREADS=() ;;
esac
cargo build --release -q --example serve_load
LOAD=./target/release/examples/serve_load
VGG=./target/release/vgg
rss() { awk '/VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$1/status"; }
start_server() {  # log file, serve args...: sets pid and url
    local log=$1; shift
    "${SERVER[@]}" $VGG serve --port 0 "${THREADS[@]}" "$@" > "$log" 2>/dev/null &
    pid=$!
    for _ in $(seq 300); do grep -q listening "$log" && break; sleep 0.1; done
    url=$(sed -n 's|.*listening on ||p' "$log" | head -1)
    for _ in $(seq 600); do curl -sf "$url/v2/health/ready" > /dev/null && break; sleep 0.1; done
}
run_case() {  # name, bench args, serve args, side, channels, batch, bench iterations
    local name=$1 bargs=$2 sargs=$3 side=$4 ch=$5 n=$6 iters=$7
    local cap
    cap=$("${BENCH[@]}" $VGG bench $bargs --batch "$n" --iters "$iters" --warmup 2 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["img_per_s"])')
    echo "$name: vgg bench --batch $n: $cap img/s ($(lscpu | sed -n 's/Model name: *//p'))"
    local log; log=$(mktemp)
    local pid url
    start_server "$log" --max-batch-size "$n" $sargs
    local model; model=$(curl -s "$url/v2/models/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_stats"][0]["name"])')
    echo "  server RSS at start: $(rss $pid)"
    local alone; alone=$("${CLIENT[@]}" $LOAD "$url" "$model" "$side" "$ch" "closed:1" "$SECS")
    echo "  no load (closed:1) $alone"
    for c in "$n" "$((2 * n))"; do echo "  closed:$c $("${CLIENT[@]}" $LOAD "$url" "$model" "$side" "$ch" "closed:$c" "$SECS") RSS $(rss $pid)"; done
    # The capacity again, after the closed-loop rows (the server idle): how much it drifted.
    echo "  vgg bench --batch $n again: $("${BENCH[@]}" $VGG bench $bargs --batch "$n" --iters "$iters" --warmup 2 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["img_per_s"])') img/s"
    open_loads() {
        for x in 1 2 4; do
            local rate; rate=$(python3 -c "print($cap * $x)")
            echo "  open ${x}x ($rate/s) $("${CLIENT[@]}" $LOAD "$url" "$model" "$side" "$ch" "open:$rate" "$SECS") RSS $(rss $pid)"
        done
        echo "  server RSS at the end: $(rss $pid)"
        kill $pid; wait $pid 2>/dev/null || true
    }
    open_loads
    local budget; budget=$(echo "$alone" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['p99_s'] * ${BUDGET_X:-1.5} * 1e6))")
    echo "  with --latency-budget-us $budget (${BUDGET_X:-1.5}x the no-load p99):"
    start_server "$log" --max-batch-size "$n" $sargs --latency-budget-us "$budget"
    open_loads
    rm -f "$log"
}
case " ${CASES:-builtin vgg16} " in *" builtin "*)
run_case "built-in Fashion-MNIST model" "--arch vgg13_bn --width 0.375 --head cifar --num-classes 10 --in-channels 1 --size 32" "" 32 1 8 100 ;;
esac
case " ${CASES:-builtin vgg16} " in *" vgg16 "*)
run_case "VGG-16 224x224" "--arch vgg16 --size 224" "--model vgg16=random --arch vgg16 ${VGG16_DELAY_US:+--max-queue-delay-us $VGG16_DELAY_US}" 224 3 8 6 ;;
esac
