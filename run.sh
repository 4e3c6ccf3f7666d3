#!/usr/bin/env bash
# Runs `python ARGS...` in the project's virtual environment, creating it on first use.
#   ./run.sh main.py                     the main job on the embedded demo data
#   ./run.sh --test -m pytest -q tests   the tests (installs the test requirements too)
set -euo pipefail
cd "$(dirname "$0")"
reqs=requirements.txt
if [[ "${1:-}" == "--test" ]]; then reqs=requirements-test.txt; shift; fi
venv=${VENV:-.venv}
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
stamp="$venv/.installed-$(cat requirements.txt "$reqs" | sha1sum | cut -c1-12)-${reqs%.txt}"
if [[ ! -f "$stamp" ]]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
  touch "$stamp"
fi
exec "$venv/bin/python" "$@"
