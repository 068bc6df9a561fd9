#!/usr/bin/env bash
# Smoke-check a deployed service: its health endpoint answers, and its version
# endpoint (when there is one) reports the expected image tag, so a stale pod
# answering 200 does not pass. Prints one summary line on stdout (used as the
# verification note); details go to stderr. Exits non-zero when a check fails.
# Whatever the service answers, the summary line is printable ASCII and short: a
# quoted answer keeps at most 200 bytes, every other byte shown as `?`.
#
# Environment:
#   ENVIRONMENT_URL   base URL of the environment (required)
#   HEALTH_PATH       health endpoint (default: /healthz)
#   VERSION_PATH      version endpoint; empty skips the version check
#   EXPECTED_VERSION  image tag the version endpoint must report
#   SMOKE_RETRIES     attempts per check (default: 10)
#   SMOKE_RETRY_DELAY seconds between attempts (default: 6)
#   SMOKE_TIMEOUT     seconds per request (default: 10)
set -euo pipefail

base=${ENVIRONMENT_URL:-}
if [[ -z "$base" ]]; then
  echo "no ENVIRONMENT_URL configured: nothing to check"
  exit 1
fi
base=${base%/}
health_url="$base${HEALTH_PATH:-/healthz}"
retries=${SMOKE_RETRIES:-10}
delay=${SMOKE_RETRY_DELAY:-6}
timeout=${SMOKE_TIMEOUT:-10}

# The first 200 bytes of $1 with every byte outside printable ASCII (controls, escape
# sequences, Latin-1, invalid or any other UTF-8) replaced by `?`. Pure bash: no pipeline
# that a closed pipe could fail under `set -o pipefail`.
printable() {
  local LC_ALL=C
  local text=${1:0:200}
  printf '%s' "${text//[^ -~]/?}"
}

fetch() {
  curl --fail --silent --show-error --location --max-time "$timeout" "$1"
}

status=""
for ((attempt = 1; attempt <= retries; attempt++)); do
  status=$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time "$timeout" \
    "$health_url" || true)
  if [[ "$status" =~ ^2[0-9][0-9]$ ]]; then
    break
  fi
  echo "health check $attempt/$retries: GET $health_url answered ${status:-nothing}" >&2
  if ((attempt < retries)); then sleep "$delay"; fi
done
if ! [[ "$status" =~ ^2[0-9][0-9]$ ]]; then
  echo "health check failed: GET $health_url answered ${status:-nothing} after $retries attempts"
  exit 1
fi
summary="GET $health_url answered $status"

if [[ -n "${VERSION_PATH:-}" ]]; then
  version_url="$base$VERSION_PATH"
  expected=${EXPECTED_VERSION:?set EXPECTED_VERSION to check $version_url}
  body=""
  for ((attempt = 1; attempt <= retries; attempt++)); do
    body=$(fetch "$version_url" 2>/dev/null || true)
    if [[ "$body" == *"$expected"* ]]; then
      break
    fi
    echo "version check $attempt/$retries: $version_url does not report $expected yet" >&2
    if ((attempt < retries)); then sleep "$delay"; fi
  done
  if [[ "$body" != *"$expected"* ]]; then
    echo "version check failed: $version_url does not report $expected: $(printable "$body")"
    exit 1
  fi
  summary="$summary; $version_url reports $expected"
fi
echo "$summary"
