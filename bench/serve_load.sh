#!/usr/bin/env bash
# Serving under load, side by side with `vgg bench` in one sitting: for the built-in model (32x32
# gray) and VGG-16 (224x224, random weights), the capacity `vgg bench --batch N` predicts, then
# `vgg serve` under closed-loop load (concurrency N and 2N) and open-loop load at 1x, 2x and 4x that
# capacity (examples/serve_load.rs), with the server's RSS before and after.
# usage: bench/serve_load.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
cargo build --release -q --example serve_load
LOAD=./target/release/examples/serve_load
VGG=./target/release/vgg
rss() { awk '/VmRSS/ {print $2 / 1024 " MiB"}' "/proc/$1/status"; }
run_case() {  # name, bench args, serve args, side, channels, batch
    local name=$1 bargs=$2 sargs=$3 side=$4 ch=$5 n=$6
    local cap
    cap=$($VGG bench $bargs --batch "$n" --iters 6 --warmup 2 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["img_per_s"])')
    echo "$name: vgg bench --batch $n: $cap img/s ($(lscpu | sed -n 's/Model name: *//p'))"
    local log; log=$(mktemp)
    $VGG serve --port 0 --max-batch-size "$n" $sargs > "$log" 2>/dev/null &
    local pid=$!
    for _ in $(seq 300); do grep -q listening "$log" && break; sleep 0.1; done
    local url; url=$(sed -n 's|.*listening on ||p' "$log" | head -1)
    for _ in $(seq 600); do curl -sf "$url/v2/health/ready" > /dev/null && break; sleep 0.1; done
    local model; model=$(curl -s "$url/v2/models/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["model_stats"][0]["name"])')
    echo "  server RSS at start: $(rss $pid)"
    for c in "$n" "$((2 * n))"; do echo "  closed:$c $($LOAD "$url" "$model" "$side" "$ch" "closed:$c" "$SECS") RSS $(rss $pid)"; done
    for x in 1 2 4; do
        local rate; rate=$(python3 -c "print($cap * $x)")
        echo "  open ${x}x ($rate/s) $($LOAD "$url" "$model" "$side" "$ch" "open:$rate" "$SECS") RSS $(rss $pid)"
    done
    echo "  server RSS at the end: $(rss $pid)"
    kill $pid; wait $pid 2>/dev/null || true
    rm -f "$log"
}
run_case "built-in Fashion-MNIST model" "--arch vgg13_bn --width 0.375 --head cifar --num-classes 10 --in-channels 1 --size 32" "" 32 1 8
run_case "VGG-16 224x224" "--arch vgg16 --size 224" "--model vgg16=random --arch vgg16" 224 3 8
