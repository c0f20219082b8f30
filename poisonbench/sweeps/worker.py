"""One sweep step, run by the library: `run_step` in this process (`sweep run --task-id`), or `python -m
poisonbench.sweeps.worker KIND SPEC_JSON` in a process of its own (a local worker, a submitit job).

A step is `experiment.defend.defend` (kind `run`) or `experiment.defend.prepare` (kind `prepare`) of the step's
`DefendSpec`, passed as JSON (`spec_to_json`). Its outcome is printed on stdout as JSON lines, the very lines
`defend --json` prints (`outcome_summary`; a prepare step's {poison_id, attack, status}); progress and errors go to
stderr, the step's log. Exit codes are `defend`'s: 0 done, 2 bad input or an OS problem (one line), 143 stopped by
SIGTERM after saving the epoch checkpoint, 130 SIGINT; an error while training propagates with its traceback (exit
1), after its failure record was written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from dataclasses import asdict, fields

from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..engine import termination
from ..experiment.defend import defend, outcome_summary, prepare
from ..experiment.records import RunStore
from ..experiment.spec import DefendSpec, epoch_text

KINDS = ("run", "prepare")


def spec_to_json(spec: DefendSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def spec_from_json(text: str) -> DefendSpec:
    """The spec `spec_to_json` wrote (JSON has no tuples: the .npz split comes back as one)."""
    values = json.loads(text)
    known = {f.name for f in fields(DefendSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PoisonbenchError(f"a step's spec has unknown field {unknown[0]!r} (written by another poisonbench?)")
    if values.get("npz_split") is not None:
        values["npz_split"] = tuple(values["npz_split"])
    return DefendSpec(**values)


class LogReporter:
    """Progress as plain lines on stderr (a step's log): one line per run started and per epoch."""

    def start(self, description: str, epochs: int) -> None:
        self.description, self.epochs = description, epochs
        print(f"{description}: {epochs} epochs", file=sys.stderr, flush=True)

    def batch(self, epoch: int, step: int, steps: int) -> None:
        pass

    def epoch(self, epoch: int, row: dict) -> None:
        print(epoch_text(self.description, epoch, self.epochs, row), file=sys.stderr, flush=True)

    def stop(self) -> None:
        pass


def die_with_parent(parent: int) -> None:  # pragma: no cover (runs in the step's process, before it works)
    """A step process's first act, cold (between fork and exec, the pool's `preexec_fn`) or forked from the warm
    server (`sweeps.warm`, whose server is then `parent`): SIGINT left to the sweep, SIGTERM when `parent` dies."""
    # A Ctrl-C reaches the whole foreground process group, the steps too: they leave SIGINT to the sweep, which
    # stops them with SIGTERM (each saves its epoch; a second Ctrl-C, a second SIGTERM, stops them at once). Python
    # keeps an ignored SIGINT ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_step(kind: str, spec: DefendSpec) -> list[dict]:
    """Run the step and return its JSON lines (`defend --json`'s)."""
    if kind not in KINDS:
        raise PoisonbenchError(f"unknown step kind {kind!r}; valid choices: {', '.join(KINDS)}")
    if kind == "prepare":
        return prepare(spec, LogReporter())
    store = RunStore(spec.results)
    return [outcome_summary(o, store) for o in defend(spec, LogReporter())]


def main(argv: list[str] | None = None) -> int:
    """`python -m poisonbench.sweeps.worker KIND SPEC_JSON`: run the step, print its JSON lines; the exit code."""
    args = sys.argv[1:] if argv is None else argv
    show = warnings.showwarning

    def one_line(message, category, *rest, **kwargs) -> None:
        if issubclass(category, PoisonbenchWarning):
            print(f"Warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, *rest, **kwargs)

    installed = termination.install()  # SIGTERM: finish the epoch in progress, save it, exit 143
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            if len(args) != 2:
                raise PoisonbenchError("usage: python -m poisonbench.sweeps.worker run|prepare SPEC_JSON")
            for line in run_step(args[0], spec_from_json(args[1])):
                print(json.dumps(line), flush=True)
    except PoisonbenchError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 2
    except termination.Terminated as exc:
        print(f"Terminated: {exc}", file=sys.stderr, flush=True)
        return termination.EXIT_CODE
    except KeyboardInterrupt:
        print("Aborted.", file=sys.stderr, flush=True)
        return 130
    finally:
        if installed:
            termination.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
