"""Training progress on stderr: a tqdm bar (docs/DESIGN.md, "Trainer guarantees")."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["Progress"]

log = logging.getLogger(__name__)


class Progress:
    """Steps done of ``total``: a bar that log messages pass above (``enabled`` False: silent).

    :meth:`update` counts a step; :meth:`report` shows the latest loss, learning rate etc.
    """

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True) -> None:
        self.total, self.initial, self.enabled = total, initial, enabled
        self._bar: Any = None
        self._redirect: Any = None

    def __enter__(self) -> Progress:
        self._bar = tqdm(
            total=self.total, initial=self.initial, desc="train", unit="step",
            disable=not self.enabled, dynamic_ncols=True, file=sys.stderr,
        )  # fmt: skip
        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("lcnet")])
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._redirect.__exit__(*exc)
        self._bar.close()

    def update(self, steps: int = 1) -> None:
        self._bar.update(steps)

    def report(self, step: int, **fields: Any) -> None:
        """Show ``fields`` (already formatted) for ``step``."""
        self._bar.set_postfix(**{k: v for k, v in fields.items() if k != "epoch"})
        log.debug("step %d %s", step, " ".join(f"{k} {v}" for k, v in fields.items()))
