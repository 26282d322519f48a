#!/bin/sh
# Runs every Go fuzz target in the tree for a short time each
# (FUZZTIME, default 3s). A crash fails the run.
set -eu
FUZZTIME="${FUZZTIME:-3s}"
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r file; do
	dir=$(dirname "$file")
	grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //' | while read -r target; do
		echo "fuzz: $dir $target ($FUZZTIME)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$dir"
	done
done
