"""A rich progress bar for training runs, drawn on stderr so `--json` stdout stays machine-readable."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..core.console import stdout_console  # noqa: F401  (re-exported for the commands)
from ..experiment.spec import epoch_text

stderr = Console(stderr=True)


class RichReporter:
    def __init__(self, console: Console = stderr):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.description = ""

    def start(self, description: str, epochs: int) -> None:
        self.description, self.epochs = description, epochs
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(f"{description} · epoch 1/{epochs}", total=None)

    def batch(self, epoch: int, step: int, steps: int) -> None:
        total = steps * self.epochs
        self.progress.update(self.task, total=total, completed=epoch * steps + step)

    def epoch(self, epoch: int, row: dict) -> None:
        self.progress.update(self.task, description=epoch_text(self.description, epoch, self.epochs, row))

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


class Spinner:
    """A transient status line for steps without a known length (loading data, crafting set-up)."""

    def __init__(self, text: str, console: Console = stderr):
        self.status = console.status(text)

    def __enter__(self):
        self.status.__enter__()
        return self

    def __exit__(self, *exc):
        return self.status.__exit__(*exc)
