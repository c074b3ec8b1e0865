"""Reading and checking a large file in a process of its own.

Validating 100,000 rows is Python work in two halves of about equal size: reading the sheet
and applying the registry's rules, then looking up and staging the rows in the database.
One process does one half while a forked child does the other, so the machine's second
core halves the wait. The child never touches the database (its connections belong to the
parent): whatever it needs from it is loaded before the fork.
"""
from __future__ import annotations

import gc
import multiprocessing
import pickle
from typing import Iterator


class ReaderStopped(RuntimeError):
    """The child process died without saying why (killed, out of memory)."""


class ReaderProcess:
    """``items`` (a generator not yet started) iterated in a process forked at once, so the
    child is reading while the caller starts its threads (fork before any thread starts).
    Iterate this for what the child yields, as it comes: an exception in the child is raised
    here. ``close()`` kills the child if it still runs; use it as ``closing(ReaderProcess(...))``
    so the child ends however the caller's loop does. The pipe holds about one item, so the
    child stays at most a batch or two ahead and its memory stays bounded."""

    def __init__(self, items: Iterator):
        context = multiprocessing.get_context("fork")
        self._receiving, sending = context.Pipe(duplex=False)
        self._child = context.Process(target=_produce, args=(items, sending, self._receiving),
                                      daemon=True, name="upload-reader")
        self._child.start()
        sending.close()

    def __iter__(self) -> Iterator:
        while True:
            try:
                kind, value = self._receiving.recv()
            except EOFError:
                self._child.join()
                raise ReaderStopped(f"The process reading the file stopped (exit code "
                                    f"{self._child.exitcode}).") from None
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def close(self) -> None:
        self._receiving.close()
        if self._child.is_alive():
            self._child.kill()
        self._child.join()


def _produce(items: Iterator, sending, receiving) -> None:
    # Only the parent reads: with the reading end closed here, a send fails as soon as the
    # parent is gone (killed), instead of waiting for ever on a pipe nobody empties.
    receiving.close()
    # The parent's objects (its database connections among them) must not be finalised
    # here: a collected connection would close the parent's socket or file.
    gc.disable()
    try:
        for item in items:
            sending.send(("item", item))
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        try:
            sending.send(("error", exc))
        except (BrokenPipeError, OSError):
            pass  # the parent is gone
        return
    sending.send(("end", None))
