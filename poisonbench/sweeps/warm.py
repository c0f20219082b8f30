"""Warm starts: a local sweep's step processes forked from a server that imported the library once.

A step process (`python -m poisonbench.sweeps.worker`) spends about 6 CPU-seconds importing torch, the library and
`torch._dynamo` (which `torch.optim` imports at an optimizer's first step, with `--compile off` too) before it
trains: 4-5 s of a 40-s `quick` run on a CPU. On Linux, without a GPU, the local pool instead forks each step from
a server process (multiprocessing's `forkserver`, preloading `PRELOAD`) that did those imports once, so each step
after the sweep's first starts in milliseconds.

A forked step is the same step: `worker.main` on the same arguments, its stdout a pipe and its stderr the step's
log, the environment the pool gives it (`OMP_NUM_THREADS` becomes `torch.set_num_threads`, at most torch's cap
on threads, as in a fresh process),
SIGINT ignored, and SIGTERM when its parent dies. Its parent is the server, which ends when the sweep does: the child
closes the server's liveness pipe that multiprocessing hands it (held open, it would keep the server, and so the
child, alive after the sweep died), and a child whose server ended before it asked for SIGTERM stops at once. Its
exit code (a negative signal number when a signal killed it) comes back through the server; where the server was
killed first, the step got SIGTERM and counts as stopped by it.

Where the steps start cold (a fresh interpreter each, `subprocess.Popen`):
- with a GPU in use: a process that touched CUDA cannot be forked, and the server's imports are not proven to leave
  CUDA untouched on every driver, so the GPU path keeps its fresh interpreters;
- off Linux (no `PR_SET_PDEATHSIG`; no `forkserver` on Windows), or where multiprocessing does not name the
  liveness pipe as `ALIVE_FD` says;
- with `POISONBENCH_WARM_START=0` in the environment (a plugin that starts threads at import, a debugger);
- when the server cannot start or fork (it died; a plugin imported by the preload exited it): one warning line,
  and the rest of the sweep starts cold.

The server holds the library as it was when the sweep started it: a source file edited while a sweep runs reaches
its later steps only when they start cold. Its memory is shared with the steps until they write to it (fork's copy
on write).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from multiprocessing import forkserver, reduction

ENV_SWITCH = "POISONBENCH_WARM_START"  # "0": every step in a fresh interpreter
# the server's imports; `warm_server` last, so that its exit handler runs first
PRELOAD = ["poisonbench.sweeps.worker", "poisonbench.sweeps.warm", "torch._dynamo", "poisonbench.sweeps.warm_server"]


ALIVE_FD = "_forkserver_alive_fd"  # multiprocessing's name (3.8-3.13) for the server's liveness pipe in a child


def wanted(gpus: int, environ: os._Environ | dict[str, str] = os.environ) -> bool:
    """Whether a local pool forks its steps from the server: on Linux, with no GPU in use, unless switched off,
    and where multiprocessing keeps the server's liveness pipe where `_child` closes it (else a step would outlive
    its sweep)."""
    return (sys.platform == "linux" and gpus == 0 and environ.get(ENV_SWITCH, "1").strip() != "0"
            and ALIVE_FD in vars(forkserver._forkserver))


class _Fd:
    """A descriptor handed to the forked child: duplicated into it through the server (SCM_RIGHTS) when the
    process object is pickled, and taken by `detach()` there."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _Fd._rebuilt, (reduction.DupFd(self.fd),)

    @staticmethod
    def _rebuilt(dup) -> _Fd:
        return _Fd(dup.detach())


def _context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _child(argv: list[str], environ: dict[str, str], stdout: _Fd, stderr: _Fd, server: int) -> None:
    """The step, in the forked child: `worker.main(argv)` as a fresh `python -m poisonbench.sweeps.worker` would
    run it (`worker.die_with_parent`, here of the server, and the environment included); exits with its code."""
    from .worker import die_with_parent, main

    # multiprocessing hands each child the write end of the pipe whose EOF tells the server that its clients are
    # gone; a step holding it would keep the server alive after the sweep died, and itself with it (its
    # PR_SET_PDEATHSIG fires when the server ends)
    _drop_server_alive_fd()
    die_with_parent(server)  # the server ends with the sweep
    for fd, target in ((stdout.fd, 1), (stderr.fd, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(environ)
    threads = environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit() and int(threads) > 0:
        import torch

        # what a fresh process makes of OMP_NUM_THREADS: torch reads it once, at import, and takes at most its own
        # cap (the cores); the server imported torch with the variable at the core count, so its threads, which
        # the child inherits, are that cap
        torch.set_num_threads(min(int(threads), torch.get_num_threads()))
    sys.stdout.flush()
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # what torch reads at import for its threads


def _ensure_server() -> None:
    """Start the server if it is not running, with torch's thread variables at the core count: its torch then holds
    its cap on threads, which `_child` applies to a step's OMP_NUM_THREADS as a fresh process would."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(os.cpu_count() or 1)))
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


LOST = 255  # multiprocessing's exit code for a child whose end the server did not report


def _server_alive() -> bool:
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return False
    try:  # WNOWAIT: a dead server is left for multiprocessing to reap (and restart)
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _drop_server_alive_fd() -> None:
    fd = getattr(forkserver._forkserver, ALIVE_FD, None)
    if fd is not None:
        os.close(fd)
        setattr(forkserver._forkserver, ALIVE_FD, None)


class WarmProcess:
    """A step forked from the server, with the part of `subprocess.Popen`'s interface the pool uses: `pid`,
    `poll()`, `returncode`, `send_signal` and `stdout` (read once it ended)."""

    def __init__(self, argv: list[str], environ: dict[str, str], stderr: int):
        context = _context()
        _ensure_server()  # (before the process object is made: its child checks the server's pid)
        server = getattr(forkserver._forkserver, "_forkserver_pid", None)
        if server is None:
            raise RuntimeError("the forkserver did not start")
        read, write = os.pipe()  # (not inheritable, PEP 446: only the child's duplicate reaches it)
        try:
            self._process = context.Process(target=_child, args=(argv, environ, _Fd(write), _Fd(stderr), server))
            self._process.start()
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)  # the child holds its own copy: EOF once it ends
        self.pid = self._process.pid
        self.stdout = os.fdopen(read)  # text, as `subprocess.Popen(..., text=True)` reads a cold step's
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self._process.exitcode
            if code == LOST and not _server_alive():
                # the server died (killed from outside) before it could report: the step got SIGTERM from its
                # PR_SET_PDEATHSIG and saved its epoch, as a cold step does when its sweep dies
                code = -signal.SIGTERM
            self.returncode = code
            if code is not None:
                self._process.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a signal to a pid the server has reaped (and the system may reuse)
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def start(argv: list[str], environ: dict[str, str], stderr: int) -> WarmProcess:
    """Fork the step `argv` (`worker.main`'s arguments) from the server, which starts on the first call. Raises
    OSError (or EOFError, ConnectionError) when the server cannot start or fork."""
    return WarmProcess(argv, environ, stderr)
