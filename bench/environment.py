"""The environment of the processes a benchmark starts: the caller's, as an installed stepline would run in.

One difference is made on purpose: PYTHONDONTWRITEBYTECODE is dropped. An installed stepline finds its
modules' bytecode cached (pip compiles it at install, and Python writes it at first import), and the
engine's loader caches each job file's bytecode, which its worker then reads. With the variable set, every
worker compiles the job file and the engine's modules from source: on our 2-CPU VMs that left 1-2 MB more
memory in each worker, which every forked attempt copies and tears down (fork and exit cost about 0.07 ms
per MB), so the table would measure the caller's shell, not stepline.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_environment(**changes: str) -> dict[str, str]:
    """os.environ with the project on PYTHONPATH, bytecode caching left on, and `changes` applied."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + existing if existing else "")
    env.update(changes)
    return env
