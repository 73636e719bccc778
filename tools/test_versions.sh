#!/usr/bin/env bash
# The test suite against other versions of the libraries than CI's pins: a fresh virtual environment with the
# Python and the package versions named, se_plugins[dev] installed editable into it, then the README's test command.
#
#   tools/test_versions.sh PYTHON [PIP_SPEC...] [-- PYTEST_ARGS...]
#   tools/test_versions.sh python3.12 torch==2.11.0 torchvision==0.26.0          # the GPU machine's torch
#   tools/test_versions.sh python3.11 torch==2.15.0 torchvision==0.29.2          # newer than CI's pins
#   tools/test_versions.sh python3.10 torch==2.12.1 torchvision==0.27.1 -- tests/test_fx.py  # one test file
#
# The specs are installed together with se_plugins[dev], so pip checks them against pyproject.toml's ranges; the
# machine-wide pip constraint (a cap at the locally stored torch) is lifted for this install (PIP_CONSTRAINT). The
# environment goes to VENV (default: a new temporary folder) and is kept, with `pip list` in VENV/versions.txt.
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '2,12p' "$0"; exit 2; }
py=$1; shift
specs=()
while [[ $# -gt 0 && "$1" != "--" ]]; do specs+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
cd "$(dirname "$0")/.."
venv="${VENV:-$(mktemp -d)/venv}"
"$py" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
PIP_CONSTRAINT=/dev/null python -m pip install --quiet "${specs[@]}" -e ".[dev]"
python -m pip list --format=freeze > "$venv/versions.txt"
echo "$(python --version); $(grep -iE '^(torch|torchvision|timm|segmentation.models.pytorch|numpy)==' "$venv/versions.txt" \
  | tr '\n' ' ')(venv: $venv)"
python -m pytest -q -n 2 --dist loadgroup "$@"
