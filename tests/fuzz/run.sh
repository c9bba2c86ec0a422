#!/usr/bin/env bash
# make fuzz: coverage-guided fuzzing (libFuzzer) of the metadata decoders
# (checkpoints and journal entries) and of the pool YAML parser, under
# AddressSanitizer and UndefinedBehaviorSanitizer, FUZZ_SECONDS each.
# The corpora grow in build-fuzz/corpus-NAME from run to run; a crash
# leaves its input in build-fuzz/ and fails the run.  Not part of
# `make check`: what it finds depends on how long it runs.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/../.." && pwd)
B=$TOP/build-fuzz
SECS=${FUZZ_SECONDS:-60}
FLAGS="-std=gnu11 -D_GNU_SOURCE -g -O1 -I$TOP/lib
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined"
# The libraries the Makefile links strata with (make fuzz passes them).
LIBS=${FUZZ_LIBS:?run this through make fuzz}

for name in meta config; do
  # shellcheck disable=SC2086
  clang $FLAGS "$TOP/tests/fuzz/fuzz-$name.c" "$B/libstrata.a" $LIBS \
    -o "$B/fuzz-$name"
  mkdir -p "$B/corpus-$name" "$B/seeds-$name"
done
if ! STRATA_FUZZ_SEEDS=$B/seeds-meta "$B/fuzz-meta" -runs=0 "$B/seeds-meta" \
     > "$B/fuzz-meta-seeds.log" 2>&1; then
  cat "$B/fuzz-meta-seeds.log" >&2
  echo "fuzz-meta: writing the seeds failed" >&2
  exit 1
fi
cp "$TOP"/etc/strata/*.yaml "$B/seeds-config/"

fail=0
for name in meta config; do
  echo "fuzz-$name: ${SECS}s"
  if ! (cd "$B" && "$B/fuzz-$name" -max_total_time="$SECS" -max_len=8192 \
          -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
          "$B/corpus-$name" "$B/seeds-$name" > "$B/fuzz-$name.log" 2>&1); then
    echo "fuzz-$name: FAILED; see $B/fuzz-$name.log and the crash-* input in $B"
    fail=1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$B/fuzz-$name.log" \
    | sed "s/^/  /"
done
exit $fail
