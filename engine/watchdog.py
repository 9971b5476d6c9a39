"""The engine's watchdog: ends the attempts of an engine that died without ending them.

The executor starts one per engine, with its first attempt: a `sh` that waits on a pipe whose other end
only the engine holds (executor.WATCHDOG_WAIT). An engine that closes in order ends its attempts itself and
says "closed" on the pipe, and the watchdog exits. If the pipe ends without it, the engine died without a
word (a kill -9, the OOM killer, a crash), and the watchdog runs this file (`python engine/watchdog.py TOKEN
GRACE`): it ends every process of this user that still carries STEPLINE_ENGINE=TOKEN, the variable each of
the engine's attempts inherits: SIGTERM, then SIGKILL after GRACE seconds.

A worker ends the Python attempts it forked by itself when its engine goes, but shell attempts are the
engine's own children, and a daemon a step started with a double fork and setsid has left every tree;
without the watchdog these would run on, unsupervised, until the next engine starts and closes the run.

Run as a script, not with `-m`: `engine/__init__.py` would import the job API first.
"""
import os
import sys


def main() -> None:
    token, grace_s = sys.argv[1], float(sys.argv[2])
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not engine/
    from engine.executor import ENGINE_VARIABLE, end_escaped

    end_escaped({ENGINE_VARIABLE: token}, grace_s)


if __name__ == "__main__":
    main()
