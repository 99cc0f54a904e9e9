#!/usr/bin/env bash
# fuzz-long.sh EXECS TARGET...: runs each fuzz target of ./bpf/ for EXECS
# executions (go test -fuzztime Nx), then prints per target and in total the
# executions, the run time, the rate, and the findings (failing inputs go to
# bpf/testdata/fuzz/<target>/, where go test replays them from then on).
# Exits non-zero if any target found something.
set -uo pipefail
cd "$(dirname "$0")/.."
execs=${1:?usage: fuzz-long.sh EXECS TARGET...}
shift
total=0 failed=0 summary=()
for target in "$@"; do
	log=$(mktemp)
	start=$(date +%s)
	go test -run '^$' -fuzz "^${target}\$" -fuzztime "${execs}x" ./bpf/ 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	secs=$(( $(date +%s) - start ))
	# The last progress line carries the final count: "execs: N (R/sec)".
	n=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | awk '{print $2}')
	n=${n:-0}
	found=$(grep -c 'Failing input written to' "$log")
	rm -f "$log"
	total=$(( total + n ))
	[ "$rc" -ne 0 ] && failed=1
	summary+=("$(printf '%-10s %12d executions in %5ds (%d/s), findings: %d, exit %d' "$target" "$n" "$secs" $(( n / (secs > 0 ? secs : 1) )) "$found" "$rc")")
done
echo "== fuzz-long summary"
printf '%s\n' "${summary[@]}"
echo "total: $total executions"
exit $failed
