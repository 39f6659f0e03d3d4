#!/usr/bin/env bash
# Install Morpheus with every extra into .venv (from scratch on a fresh machine) and run the tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# ci/constraints.txt pins torch to its CPU build; llama-cpp-python compiles portable code
# (about 5 minutes the first time; pip caches the wheel).
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
  python -m pip install --quiet -c ci/constraints.txt -c ci/orpheus-constraints.txt \
  -e ".[test,orpheus,orpheus-mlx,kokoro]"
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }

# pytest through its console script: the repo root stays off sys.path, so tests import the
# installed `morpheus_tts` package, never the folders beside them.
.venv/bin/pytest -q "$@"
