#!/bin/sh
# Runs every Go fuzz target in the tree for a short time each
# (FUZZTIME, default 3s). A crash fails the run.
#
# Go's fuzzing engine can end a short run with "context deadline
# exceeded" and no failing input when its coordinator and workers race
# at the deadline on a loaded machine. That is the engine timing out on
# itself, not a finding, so such a run is tried once more; a run that
# wrote a failing input, or fails the same way twice, fails the script.
set -eu
FUZZTIME="${FUZZTIME:-3s}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r file; do
	dir=$(dirname "$file")
	grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //' | while read -r target; do
		for try in 1 2; do
			echo "fuzz: $dir $target ($FUZZTIME, try $try)"
			if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$dir" >"$out" 2>&1; then
				cat "$out"
				break
			fi
			cat "$out"
			if [ "$try" = 1 ] && grep -q 'context deadline exceeded' "$out" &&
				! grep -q 'Failing input written' "$out"; then
				echo "fuzz: $target: the engine timed out on itself with no failing input; trying once more"
				continue
			fi
			exit 1
		done
	done
done
