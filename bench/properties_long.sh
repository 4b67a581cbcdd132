#!/usr/bin/env bash
# The property tests with the long hypothesis profile: 30 times the examples of the test command, a fresh random
# seed each run. Takes several minutes; a failure prints the example and a @reproduce_failure blob.
#   bash bench/properties_long.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -p no:cacheprovider --hypothesis-profile=gpuguard-long --hypothesis-show-statistics \
  tests/hardening/test_webhook_properties.py tests/hardening/test_extender_properties.py tests/extender/test_gpuindex.py "$@"
