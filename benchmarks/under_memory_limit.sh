#!/usr/bin/env bash
# Run a command in a memory cgroup of its own, capped at LIMIT bytes (page cache included, as
# the kernel counts it), then say how much the cgroup used at its peak and whether the OOM
# killer fired. The proof that a scan fits in less memory than its batch would take in pandas.
#
#   sudo benchmarks/under_memory_limit.sh 2G .venv/bin/poisonguard scan big.parquet ...
#
# Needs root and the memory controller (cgroup v2, or v1 mounted at /sys/fs/cgroup/memory).
# Swap is capped too where the kernel accounts it, so the limit cannot be met by swapping.
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 LIMIT COMMAND [ARGS...]   (LIMIT in bytes, or with K/M/G)" >&2
    exit 2
fi
limit=$(numfmt --from=iec "$1")
shift
name="poisonguard-limit-$$"

if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    group="/sys/fs/cgroup/$name"
    mkdir "$group"
    echo "$limit" > "$group/memory.max"
    echo 0 > "$group/memory.swap.max" 2>/dev/null || true
    peak() { cat "$group/memory.peak" 2>/dev/null || echo 0; }
    ooms() { awk '$1 == "oom_kill" {print $2}' "$group/memory.events"; }
elif [ -d /sys/fs/cgroup/memory ]; then
    group="/sys/fs/cgroup/memory/$name"
    mkdir "$group"
    echo "$limit" > "$group/memory.limit_in_bytes"
    echo "$limit" > "$group/memory.memsw.limit_in_bytes" 2>/dev/null || true
    peak() { cat "$group/memory.max_usage_in_bytes"; }
    ooms() { awk '$1 == "oom_kill" {print $2}' "$group/memory.oom_control"; }
else
    echo "no memory cgroup controller here" >&2
    exit 2
fi
# Whatever the command left in the group (a killed scan's temporary Prefect server) goes with it.
cleanup() {
    xargs -r kill -9 < "$group/cgroup.procs" 2>/dev/null || true
    sleep 1
    rmdir "$group" 2>/dev/null || true
}
trap cleanup EXIT

SECONDS=0
status=0
(echo "$BASHPID" > "$group/cgroup.procs" && exec "$@") || status=$?
echo "limit $(numfmt --to=iec "$limit"), peak $(numfmt --to=iec "$(peak)"), oom kills $(ooms)," \
     "${SECONDS} s, exit $status" >&2
exit "$status"
