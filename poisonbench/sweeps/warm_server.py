"""Imported only by the warm step server (`sweeps.warm`, the last module of its preload), never by a sweep or a
step: the server's exit is immediate.

The server exits when its sweep does (multiprocessing's forkserver, on the EOF of its liveness pipe), and its
steps get SIGTERM only once it has gone (PR_SET_PDEATHSIG). An interpreter that imported torch takes about a second
to finalise, in which a step trains on; `os._exit` at the first exit handler (the last registered runs first) ends
the server at once. It holds no file of its own to flush: its stdout and stderr are the sweep's, and it writes
nothing to them.
"""

from __future__ import annotations

import atexit
import os

atexit.register(os._exit, 0)
