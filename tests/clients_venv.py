"""The clients' own virtual environment, `.venv-clients`, built once and reused.

LiveKit Agents and Pipecat pin packages of their own (numpy, onnxruntime, openai, ...), so they
run in a venv of their own and the tests drive them as subprocesses. The venv is rebuilt when
`tests/clients/requirements.txt` changes (its hash is kept in the venv). `scripts/test.sh`
builds it before the tests; a test run that finds none builds it itself.

Run as a script to build it: `python tests/clients_venv.py`.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-clients"
REQUIREMENTS = ROOT / "tests" / "clients" / "requirements.txt"
STAMP = VENV / "requirements.sha256"


def python() -> Path:
    """The clients venv's interpreter, building or refreshing the venv first if needed."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    interpreter = VENV / "bin" / "python"
    if interpreter.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return interpreter
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(interpreter), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True, timeout=1800,
    )
    STAMP.write_text(wanted + "\n")
    return interpreter


if __name__ == "__main__":
    print(python())
