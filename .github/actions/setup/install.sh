#!/usr/bin/env bash
# Install deployment-tracker from the files of this action's commit, isolated from the repository
# being deployed: a virtual environment under $RUNNER_TEMP, dependencies pinned by hash
# (requirements.txt), the tracker module copied in and compiled, and launchers on $GITHUB_PATH.
#
# Environment:
#   SETUP_PYTHON   interpreter to build the environment from (default: python3 on PATH)
#   RUNNER_TEMP    where the environment goes (set by the runner)
#   GITHUB_PATH, GITHUB_OUTPUT, GITHUB_ENV  the runner's command files (optional outside Actions);
#                  GITHUB_ENV gets DEPLOYMENT_HISTORY_SESSION, so that the job's history calls
#                  share one fetch (deployment_history.py)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX  where pip fetches from
#
# The repository being deployed is hostile ground: every Python runs isolated (-I: neither the
# working directory nor PYTHON* variables reach sys.path, so an app's `deployment_tracker.py`,
# `sysconfig.py` or `click/` is never imported) from a directory of its own, and pip runs
# --isolated (no PIP_* variables, no configuration files) but for where it fetches from, which
# can't change what is installed: the hashes decide that, and the installed set is checked.
set -euo pipefail
# pip --python starts the environment's interpreter without -I: no PYTHON* variable may reach it.
unset "${!PYTHON@}"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_root=$(cd "$here/../../.." && pwd)
python=${SETUP_PYTHON:-python3}
home="${RUNNER_TEMP:?RUNNER_TEMP is not set}/deployment-tracker"
venv="$home/venv"
bin="$home/bin"
share="$home/share"

if [[ ! -f "$source_root/deployment_tracker.py" ]]; then
  echo "::error title=deployment-tracker setup::deployment_tracker.py not found next to the action ($source_root)"
  exit 1
fi

rm -rf "$home"
mkdir -p "$bin" "$share"
cd "$home"
# No pip inside the environment: the interpreter's own pip installs into it (--python), which
# takes a fraction of a second where ensurepip takes seconds. Without an outer pip, ensurepip.
if "$python" -I -m pip --version > /dev/null 2>&1; then
  "$python" -I -m venv --without-pip "$venv"
  pip=("$python" -I -m pip --python "$venv/bin/python")
else
  "$python" -I -m venv "$venv"
  pip=("$venv/bin/python" -I -m pip)
fi
sources=()
if [[ -n "${PIP_NO_INDEX:-}" && "${PIP_NO_INDEX,,}" =~ ^(1|true|yes|on)$ ]]; then
  sources+=(--no-index)
fi
if [[ -n "${PIP_INDEX_URL:-}" ]]; then sources+=(--index-url "$PIP_INDEX_URL"); fi
for url in ${PIP_EXTRA_INDEX_URL:-}; do sources+=(--extra-index-url "$url"); done
for link in ${PIP_FIND_LINKS:-}; do sources+=(--find-links "$link"); done
# --isolated still reads PIP_CONFIG_FILE, and pip --python's child reads the others.
unset "${!PIP_@}"
"${pip[@]}" --isolated install --disable-pip-version-check --no-input --quiet "${sources[@]}" \
  --require-hashes --no-deps --only-binary :all: -r "$here/requirements.txt"

# Exactly the pinned distributions, at their versions, and nothing else (pip itself aside,
# where ensurepip put one in).
"$venv/bin/python" -I - "$here/requirements.txt" << 'PYTHON'
import importlib.metadata
import re
import sys

def name(text):
    return re.sub(r"[-_.]+", "-", text).lower()

with open(sys.argv[1], encoding="utf-8") as pins:
    wanted = {name(m[1]): m[2] for m in re.finditer(r"^([\w.-]+)==(\S+)", pins.read(), re.M)}
found = {
    name(d.metadata["Name"]): d.version
    for d in importlib.metadata.distributions()
    if name(d.metadata["Name"]) != "pip"
}
if found != wanted:
    shown = ", ".join(f"{k}=={v}" for k, v in sorted(found.items()))
    print(f"::error title=deployment-tracker setup::the environment holds {shown}, not the pins")
    sys.exit(1)
PYTHON

site=$("$venv/bin/python" -I -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$source_root/deployment_tracker.py" "$site/deployment_tracker.py"
"$venv/bin/python" -I -m compileall -q "$site/deployment_tracker.py"

# The workflow's helper scripts (standard library only) go in as modules too, so that they also
# run from cached bytecode: the history script runs about 20 times per workflow run.
for name in bluegreen history notify settings text; do
  cp "$source_root/.github/scripts/deployment_$name.py" "$site/deployment_$name.py"
  "$venv/bin/python" -I -m compileall -q "$site/deployment_$name.py"
done
cp "$source_root/.github/scripts/kubernetes-deploy.sh" "$source_root/.github/scripts/smoke-check.sh" "$share/"

launcher() { # NAME ARGUMENTS...: a bash script running the environment's Python with ARGUMENTS
  {
    echo '#!/usr/bin/env bash'
    printf 'exec %q -I' "$venv/bin/python"
    printf ' %q' "${@:2}"
    echo ' "$@"'
  } > "$bin/$1"
  chmod +x "$bin/$1"
}
# Imported, not run as a script, so every call uses the compiled bytecode.
launcher deployment-tracker -c 'import sys; from deployment_tracker import main; sys.exit(main())'
for name in bluegreen history notify settings text; do
  launcher "deployment-$name" -c "import sys; from deployment_$name import main; sys.exit(main())"
done
for script in kubernetes-deploy smoke-check; do
  ln -s "$share/$script.sh" "$bin/$script"
done

if [[ -n "${GITHUB_PATH:-}" ]]; then echo "$bin" >> "$GITHUB_PATH"; fi
if [[ -n "${GITHUB_ENV:-}" ]]; then echo "DEPLOYMENT_HISTORY_SESSION=$home/session" >> "$GITHUB_ENV"; fi
if [[ -n "${GITHUB_OUTPUT:-}" ]]; then echo "bin=$bin" >> "$GITHUB_OUTPUT"; fi
"$bin/deployment-tracker" --version > /dev/null 2>&1 || "$bin/deployment-tracker" --help > /dev/null
echo "deployment-tracker installed in $venv; tools in $bin"
