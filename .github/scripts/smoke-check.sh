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
#   VERIFY_COMMAND    the team's own check (a bash command, run in the current directory after
#                     the built-in ones pass, with ENVIRONMENT_URL and EXPECTED_VERSION set);
#                     its exit status decides, its output goes to stderr
#   BAKE_SECONDS      once everything passed, wait this long and check everything again, so a
#                     release that fails a few minutes in is still rolled back (default: 0)
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
bake=${BAKE_SECONDS:-0}
if ! [[ "$bake" =~ ^[0-9]{1,5}$ ]]; then
  echo "BAKE_SECONDS must be a whole number of seconds"
  exit 1
fi

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

# One round of every check: prints the summary line; non-zero when one fails.
check_all() {
  local status="" attempt body summary
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
    return 1
  fi
  summary="GET $health_url answered $status"

  if [[ -n "${VERSION_PATH:-}" ]]; then
    local version_url="$base$VERSION_PATH"
    local expected=${EXPECTED_VERSION:?set EXPECTED_VERSION to check $version_url}
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
      return 1
    fi
    summary="$summary; $version_url reports $expected"
  fi

  if [[ -n "${VERIFY_COMMAND:-}" ]]; then
    local code=0
    ENVIRONMENT_URL=$base bash -c "$VERIFY_COMMAND" >&2 || code=$?
    if ((code)); then
      echo "$summary; the verification command failed (exit $code)"
      return 1
    fi
    summary="$summary; the verification command passed"
  fi
  echo "$summary"
}

summary=$(check_all) || {
  echo "$summary"
  exit 1
}
if ((bake > 0)); then
  echo "all checks passed; checking again in ${bake}s" >&2
  sleep "$bake"
  summary=$(check_all) || {
    echo "after ${bake}s: $summary"
    exit 1
  }
  summary="$summary (again after ${bake}s)"
fi
echo "$summary"
