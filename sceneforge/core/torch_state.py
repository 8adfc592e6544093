"""Process-global torch settings, changed only inside a scope and put back on exit.

:func:`torch_threads` scopes ``torch.set_num_threads``; :class:`TorchStateScope` scopes the
thread count, deterministic algorithms and the global RNG for an object (the trainer) that
needs its own settings while it works but must leave the process as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the previous count after (``n`` None or
    <= 0: unchanged)."""
    if n is None or n <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TorchStateScope:
    """An owner's own torch settings, applied while inside ``with scope():``.

    On the outermost entry the process's thread count, deterministic-algorithms mode and global
    RNG state are saved and the owner's applied; on exit the owner's RNG state is kept (so its
    random stream continues on the next entry, and :attr:`rng_state` can be checkpointed) and
    the process's settings are restored. Nested entries are no-ops.
    """

    def __init__(
        self, num_threads: int = 0, deterministic: bool = False, warn_only: bool = False, seed=0
    ) -> None:
        self.num_threads, self.deterministic, self.warn_only = num_threads, deterministic, warn_only
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._rng = torch.get_rng_state()
        self._depth = 0

    @property
    def rng_state(self) -> torch.Tensor:
        """The owner's global-RNG state (current while inside the scope)."""
        return torch.get_rng_state() if self._depth else self._rng.clone()

    @rng_state.setter
    def rng_state(self, state: torch.Tensor) -> None:
        if self._depth:
            torch.set_rng_state(state)
        else:
            self._rng = state.clone()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        threads = torch.get_num_threads()
        det = torch.are_deterministic_algorithms_enabled()
        warn = torch.is_deterministic_algorithms_warn_only_enabled()
        rng = torch.get_rng_state()
        try:
            if self.num_threads > 0:
                torch.set_num_threads(self.num_threads)
            if self.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=self.warn_only)
            torch.set_rng_state(self._rng)
            self._depth = 1
            yield
        finally:
            self._depth = 0
            self._rng = torch.get_rng_state()
            torch.set_rng_state(rng)
            torch.use_deterministic_algorithms(det, warn_only=warn)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


__all__ = ["TorchStateScope", "torch_threads"]
