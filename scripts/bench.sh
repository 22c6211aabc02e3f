#!/usr/bin/env bash
# make bench (after `make deps build`): the Go benchmarks of the packages
# that have them, then cmd/cellbench, which starts bin/cellgate on a free
# 127.0.0.1 port, drives it, compares it with Jupyter Server, then runs
# three bin/cellgate instances behind haproxy (the cluster phase; make deps
# installs haproxy), folds the Go benchmark results in, prints one table
# and writes bench/results.json and bench/README.md. See bench/README.md for
# how to read the figures.
#
# Environment: CELLBENCH_ARGS (extra cmd/cellbench flags, e.g.
# "-idle-sessions 30"); BENCH_SKIP_GO=1 skips the Go benchmarks.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

work=$(mktemp -d /tmp/cellgate-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
gobench=$work/gobench.txt
: >"$gobench"
failed=()

# gobench PKG BENCH-REGEXP [go test flags...]: one benchmark run, its output
# kept for cellbench. A failing benchmark is reported at the end; the rest
# still runs.
gobench() {
  local pkg=$1 re=$2
  shift 2
  echo "bench: go test -run '^\$' -bench '$re' $* $pkg" >&2
  if ! go test -run '^$' -count=1 -bench "$re" "$@" "$pkg" 2>&1 | tee -a "$gobench"; then
    failed+=("go test -bench '$re' $pkg")
  fi
}

if [ "${BENCH_SKIP_GO:-0}" != 1 ]; then
  # Each BenchmarkLease iteration waits for a cold start outside the timer.
  gobench ./kernelpool '^BenchmarkLease$' -benchtime=20x -timeout 10m
  gobench ./kernelpool '^BenchmarkExecuteZMQ$' -benchtime=2s -timeout 10m
  gobench ./kernelpool '^BenchmarkColdStart$' -benchtime=3x -timeout 10m
  gobench ./kernelpool '^BenchmarkSandboxedStart$' -benchtime=5x -timeout 10m
  gobench ./kernelpool '^BenchmarkSandboxedStartSage$' -benchtime=3x -timeout 10m
  gobench ./kernelpool '^BenchmarkSupply$' -benchtime=2x -timeout 10m
  gobench ./kernelpool '^BenchmarkSupplyConcurrentStarts$' -benchtime=1x -timeout 10m
  gobench ./kernelpool '^BenchmarkFirstPlot$' -benchtime=3x -timeout 10m
  gobench ./kernelpool '^BenchmarkWarmup$' -benchtime=10x -timeout 10m
  gobench ./kernelpool '^BenchmarkIdleKernelMemory$' -benchtime=1x -timeout 15m
  gobench ./kernelpool '^BenchmarkExecuteFloor$' -benchtime=300x -timeout 10m
  # One hold of the connections per iteration; the idle timeout is 60 s.
  gobench ./gateway '^BenchmarkIdleConnections$' -benchtime=300x -timeout 10m
  gobench ./sandbox '^Benchmark(ColdStart|True|IdleMemory)$' -benchtime=5x -timeout 10m
  gobench ./storage '^Benchmark' -benchtime=1s -benchmem -timeout 10m
  gobench ./jupytermsg '^BenchmarkWS$' -benchtime=200ms -benchmem -timeout 10m
fi

go build -o "$work/cellbench" ./cmd/cellbench
status=0
# shellcheck disable=SC2086 # CELLBENCH_ARGS is a list of flags
"$work/cellbench" -cellgate bin/cellgate -gobench "$gobench" -out bench ${CELLBENCH_ARGS:-} || status=$?

if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: failed: ${failed[*]}" >&2
  status=1
fi
exit $status
