#!/usr/bin/env bash
# Runs `python ARGS...` in the project's virtual environment, creating it on first use.
#   ./run.sh main.py                     the main job on the embedded demo data
#   ./run.sh --test -m pytest -q tests   the tests (in .venv-test, with the test requirements)
set -euo pipefail
cd "$(dirname "$0")"
# The tests get their own environment: the test requirements add torch and libtpu, and a JAX that
# finds libtpu on a machine without a TPU prints a page of TPU start-up errors on every run.
reqs=requirements.txt venv=${VENV:-.venv}
if [[ "${1:-}" == "--test" ]]; then reqs=requirements-test.txt venv=${VENV:-.venv-test}; shift; fi
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
stamp="$venv/.installed-$(cat requirements.txt "$reqs" | sha1sum | cut -c1-12)-${reqs%.txt}"
if [[ ! -f "$stamp" ]]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
  touch "$stamp"
fi
exec "$venv/bin/python" "$@"
