"""What a person sees: kon-ray's own lines on the terminal, everything else in the run's log file.

At default verbosity the terminal shows INFO and above from ``kon_ray`` loggers, except records
logged with ``extra=FILE_ONLY`` (lines that a progress bar or table already shows). Every other
library's logging, and once Ray runs the output of its processes (workers, Ray Train's controller,
the raylet), go to ``console.log`` in the run or study folder, named on the terminal when it opens.
``-v`` (``setup(verbose=True)``) shows everything on the terminal as well.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LOG_FILE = "console.log"
FILE_ONLY = {"console": False}
"""``log.info(..., extra=FILE_ONLY)``: a line for the log file only."""
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN_HANDLERS = ("DeepSpeed",)
"""Loggers that print through a handler of their own; their records go through ours instead."""
RAY_OUTPUT = "ray.output"
"""The log file's logger of lines that Ray's processes print (``(RayTrainWorker pid=..) ...``)."""

log = logging.getLogger(__name__)


class Live:
    """A block of lines at the bottom of the terminal, redrawn in place; log lines print above it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.lines, self.height = stream, [], 0

    def show(self, lines: list[str]) -> None:
        self.lines = lines
        self.erase()
        width = shutil.get_terminal_size().columns - 1  # a line that wraps would break the redraw
        rows = shutil.get_terminal_size().lines - 1
        shown = lines if len(lines) <= rows else [*lines[: rows - 1], f"... {len(lines) - rows + 1} more"]
        self.stream.write("".join(line[:width] + "\n" for line in shown))
        self.stream.flush()
        self.height = len(shown)

    def erase(self) -> None:
        if self.height:
            self.stream.write(f"\x1b[{self.height}F\x1b[J")  # up to the block's first line, clear below
        self.height = 0

    def start(self) -> None:
        """From now on, log lines on the terminal print above the block."""
        _console.live = self

    def stop(self) -> None:
        _console.live = None  # the last block stays on the screen

    def __enter__(self) -> Live:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class _Console:
    verbose: bool = False
    handler: logging.Handler | None = None
    file: logging.FileHandler | None = None
    live: Live | None = None
    ray_print: Callable[[dict[str, Any], bool], None] | None = None
    """Ray's printer of the raylet's messages to this driver."""


_console = _Console()


class _Terminal(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr as it is when a record comes (pytest swaps it), below which a live block is redrawn."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream: it flushes the old one, which may be closed
        live = _console.live
        if live is not None and live.height:
            live.erase()
            super().emit(record)
            live.show(live.lines)
        else:
            super().emit(record)


def on_terminal(record: logging.LogRecord) -> bool:
    """Whether a record shows on the terminal at default verbosity."""
    if record.levelno < logging.INFO or not getattr(record, "console", True):
        return False
    return record.name == "kon_ray" or record.name.startswith("kon_ray.")


def setup(verbose: bool) -> None:
    """Route logging: the terminal (all records with ``verbose``, else ``on_terminal``), and the
    log file once ``open_log`` names one. Calling it again replaces the previous set-up."""
    root = logging.getLogger()
    if _console.handler is not None:
        root.removeHandler(_console.handler)
    handler = _Terminal(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    if not verbose:
        handler.addFilter(on_terminal)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    _console.verbose, _console.handler = verbose, handler
    for name in OWN_HANDLERS:
        logger = logging.getLogger(name)
        logger.removeFilter(_through_root)
        logger.addFilter(_through_root)  # logger filters outlive the handlers a library adds on import


def _through_root(record: logging.LogRecord) -> bool:
    logging.getLogger().handle(record)
    return False  # not through the library's own handler


def verbose() -> bool:
    return _console.verbose


def open_log(folder: Path) -> Path:
    """Append the log of everything to ``folder/console.log`` from now on; say so on the terminal."""
    close_log()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_FILE
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)
    output = logging.getLogger(RAY_OUTPUT)
    output.propagate, output.handlers = False, [handler]
    _console.file = handler
    log.info("log: %s", path)
    return path


def close_log() -> None:
    if _console.file is not None:
        logging.getLogger().removeHandler(_console.file)
        logging.getLogger(RAY_OUTPUT).handlers = []
        _console.file.close()
        _console.file = None


def capture_ray_logging() -> None:
    """Ray's own logging on this driver through ours (after ``import ray``, which sets its handler)."""
    if _console.file is None:
        return
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers, ray_logger.propagate = [], True


def capture_ray_output() -> None:
    """The output of Ray's processes into the log file (after ``ray.init``), and off the terminal
    unless verbose: what they print, and the errors and warnings the raylet sends this driver
    (such as how many worker processes it started). Nothing changes while no log file is open."""
    if _console.file is None:
        return
    from ray._private import worker  # Ray has no public hook for either

    worker.global_worker_stdstream_dispatcher.remove_handler("kon_ray_log")
    worker.global_worker_stdstream_dispatcher.add_handler("kon_ray_log", _log_ray_output)
    if not _console.verbose:
        worker.global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")  # Ray's printer
    _console.ray_print = _console.ray_print or worker.print_to_stdstream
    worker.print_to_stdstream = _log_raylet_message


def _log_raylet_message(data: dict[str, Any], ignore_prefix: bool) -> None:
    _log_ray_output(data)
    if _console.verbose and _console.ray_print is not None:
        _console.ray_print(data, ignore_prefix)


def _log_ray_output(data: dict[str, Any]) -> None:
    """One batch of lines that a Ray process printed, as Ray's printer would show them."""
    from ray._private.worker import filter_autoscaler_events

    pid, lines = data.get("pid"), data.get("lines", [])
    if pid == "autoscaler":  # its events, not the cluster status it prints every few seconds
        source, lines = "autoscaler", filter_autoscaler_events(lines)
    elif pid == "raylet":
        source = "raylet"
    else:
        source = " ".join(filter(None, [data.get("actor_name") or data.get("task_name"), f"pid={pid}"]))
    output = logging.getLogger(RAY_OUTPUT)
    for line in lines:
        output.info("(%s) %s", source, line)
