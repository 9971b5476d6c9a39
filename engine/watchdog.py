"""The engine's watchdog: ends the attempts of an engine that died without ending them.

The executor starts one per engine, with its first attempt (`python engine/watchdog.py FD TOKEN GRACE`).
It waits on a pipe whose other end only the engine holds. That end closes however the engine ends: an
orderly close, a crash, the OOM killer, a `kill -9`. Then the watchdog ends every process of this user
that still carries STEPLINE_ENGINE=TOKEN, the variable each of the engine's attempts inherits: SIGTERM,
then SIGKILL after GRACE seconds. A worker ends the Python attempts it forked by itself when its engine
goes, but shell attempts are the engine's own children, and a daemon a step started with a double fork
and setsid has left every tree; without the watchdog these would run on, unsupervised, until the next
engine starts and closes the run. After an orderly close the sweep finds nothing.

Run as a script, not with `-m`: it waits on the pipe having imported nothing of stepline, so it costs
an engine no more than a bare interpreter start.
"""
import os
import sys


def main() -> None:
    fd, token, grace_s = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    while os.read(fd, 4096):  # the engine never writes: this returns b"" when its end closes
        pass
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project, not engine/
    from engine.executor import ENGINE_VARIABLE, end_escaped

    end_escaped({ENGINE_VARIABLE: token}, grace_s)


if __name__ == "__main__":
    main()
