"""Act on a stop flag while the thread that should notice it is blocked.

A thread streaming a model's answer sits in a blocking socket read between chunks;
when the model goes quiet it would only see its stop flag (a ``threading.Event``)
when the next chunk arrives, or when the read times out. :class:`CancelWatcher`
closes that gap: one shared daemon thread checks the registered stop flags every
``interval`` seconds and runs the registered action (e.g. shutting the upstream
socket down) as soon as a flag is set, so the blocked read returns at once.

The watcher thread is started on first use and then lives for the process; it sleeps
without polling while nothing is registered. Watches are removed when their ``with``
block ends, so nothing accumulates per request.
"""

from __future__ import annotations

import itertools
import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

#: Seconds between two checks of the registered stop flags.
DEFAULT_INTERVAL = 0.05


class CancelWatcher:
    """One thread that runs an action once a watched ``threading.Event`` is set.

    Args:
        interval: seconds between checks while at least one watch is registered.

    Actions run on the watcher thread, one at a time, under the watcher's lock: they
    must be quick and must not block (e.g. ``socket.shutdown``). Each runs at most
    once, and never after its ``with`` block has ended.
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self._condition = threading.Condition()
        self._watches: dict[int, tuple[threading.Event, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, event: threading.Event, action: Callable[[], None]) -> Iterator[None]:
        """Run ``action`` on the watcher thread if ``event`` is set inside the block.

        Args:
            event: the stop flag.
            action: called once, without arguments, shortly (``interval``) after
                ``event`` is set; exceptions are logged and dropped.
        """
        with self._condition:
            key = next(self._keys)
            self._watches[key] = (event, action)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="llm-cancel-watcher", daemon=True)
                self._thread.start()
            self._condition.notify()
        try:
            yield
        finally:
            with self._condition:
                self._watches.pop(key, None)

    def watching(self) -> int:
        """How many watches are registered now (for tests and diagnostics)."""
        with self._condition:
            return len(self._watches)

    def _run(self) -> None:
        with self._condition:
            while True:
                if not self._watches:
                    self._condition.wait()  # idle: woken by the next watch()
                    continue
                for key, (event, action) in list(self._watches.items()):
                    if event.is_set():
                        del self._watches[key]
                        try:
                            action()
                        except Exception:  # noqa: BLE001 - the watcher must keep running
                            logger.exception("cancel watcher: action failed")
                self._condition.wait(self.interval)


#: The watcher shared by every model stream of the process.
WATCHER = CancelWatcher()
