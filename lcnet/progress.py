"""Training progress on stderr (docs/DESIGN.md, "Trainer guarantees").

On a terminal: a tqdm bar that log messages pass above. Anywhere else (CI, ``nohup``, a log
file, a pipe) a bar is one endless line of carriage returns, so progress becomes plain log
lines instead: one per ``--log-every`` steps, but at most one every :data:`PLAIN_EVERY_S`
seconds (the first report and the last step always), which also go to ``train.log``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["PLAIN_EVERY_S", "Progress"]

log = logging.getLogger(__name__)

#: Least seconds between two plain progress lines.
PLAIN_EVERY_S = 30.0


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Steps done of ``total``: a bar on a terminal, plain lines elsewhere (``enabled`` False:
    silent, for the other data-parallel ranks).

    :meth:`update` counts a step; :meth:`report` shows the latest loss, learning rate etc.
    """

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True) -> None:
        self.total, self.initial, self.enabled = total, initial, enabled
        self.bar_mode = enabled and _is_terminal(sys.stderr)
        self._bar: Any = None
        self._redirect: Any = None
        self._last_line: float | None = None

    def __enter__(self) -> Progress:
        if self.bar_mode:
            self._bar = tqdm(
                total=self.total, initial=self.initial, desc="train", unit="step",
                dynamic_ncols=True, file=sys.stderr,
            )  # fmt: skip
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("lcnet")])
            self._redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._redirect.__exit__(*exc)
            self._bar.close()

    def update(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def report(self, step: int, **fields: Any) -> None:
        """Show ``fields`` (already formatted) for ``step``."""
        text = " ".join(f"{k} {v}" for k, v in fields.items())
        if self._bar is not None:
            self._bar.set_postfix(**{k: v for k, v in fields.items() if k != "epoch"})
            log.debug("step %d %s", step, text)
            return
        if not self.enabled:
            return
        now = time.monotonic()
        due = self._last_line is None or now - self._last_line >= PLAIN_EVERY_S
        if due or step >= self.total:
            self._last_line = now
            percent = 100 * step // max(self.total, 1)
            log.info("step %d/%d (%d%%) %s", step, self.total, percent, text)
