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
  -e ".[test,orpheus,orpheus-mlx,moss,moss-mlx,kokoro]"
# The real clients the conformance tests drive (LiveKit Agents, Pipecat) live in their own venv,
# .venv-clients, so their pins never meet the server's; rebuilt only when their pins change.
.venv/bin/python tests/clients_venv.py
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
# The browser tests (tests/test_web.py) drive Debian's chromium; no browser is downloaded.
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# pytest through its console script: the repo root stays off sys.path, so tests import the
# installed `morpheus_tts` package, never the folders beside them.
.venv/bin/pytest -q "$@"
