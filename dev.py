#!/usr/bin/env python3
"""The README's two commands, needing only Python 3.11+ on a fresh machine.

    python3 dev.py run     set up, then run Redis, the web app and a worker with the scheduler
    python3 dev.py test    set up, then run the whole test suite

Set-up means: a virtualenv in .venv with requirements-dev.txt installed (again only when the
requirements change). Everything else lives in devtools/devserver.py, run inside that virtualenv.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
REQUIREMENTS = [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]
STAMP = VENV / ".requirements.sha256"


def ensure_virtualenv():
    """Create .venv and install the requirements when they changed since the last install."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in REQUIREMENTS)).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == digest:
        return
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print("installing requirements (first run only) ...", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(ROOT / "requirements-dev.txt")], check=True)
    STAMP.write_text(digest)


def main(argv):
    if not argv or argv[0] not in {"run", "test"}:
        print(__doc__)
        return 2
    ensure_virtualenv()
    os.chdir(ROOT)
    command = [str(PYTHON), "-m", "devtools.devserver", *argv]
    # Replace this process so Ctrl-C and exit codes go straight to the real command.
    if os.name == "nt":
        return subprocess.call(command)
    os.execv(str(PYTHON), command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
