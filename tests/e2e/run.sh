#!/usr/bin/env bash
# Run every end-to-end test and print one line each, then the totals.
# TESTS="test-a.sh test-b.sh" runs a subset.
set -u
cd "$(dirname "$0")"
pass=0 failed=0 skipped=0 failures=()
for t in ${TESTS:-test-*.sh}; do
  start=$(date +%s)
  # A hung test fails alone instead of stalling the whole run.
  timeout -k 10 "${TEST_TIMEOUT:-900}" bash "$t" > "${t%.sh}.log" 2>&1
  rc=$?
  [ $rc -eq 124 ] && echo "(timed out after ${TEST_TIMEOUT:-900}s)" >> "${t%.sh}.log"
  secs=$(( $(date +%s) - start ))
  case $rc in
    0) pass=$((pass+1)); echo "PASS: $t (${secs}s)";;
    77) skipped=$((skipped+1)); echo "SKIP: $t ($(tail -n1 "${t%.sh}.log"))";;
    *) failed=$((failed+1)); failures+=("$t"); echo "FAIL: $t (${secs}s)"
       sed 's/^/    /' "${t%.sh}.log" | tail -n 30;;
  esac
done
echo "e2e: $pass passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
