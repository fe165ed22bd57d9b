"""Batching across sessions: the step requests of many clients, run together.

The server queues the step requests it receives in one pass over its socket and
runs those of sessions whose ensembles hold the same models with one call per
model (:func:`sophia.serving.ensemble.step_together`): their streams' states are
gathered, stepped together and scattered back. The wait for more requests is
bounded by ``--max_batch_delay_us`` and skipped when every session that could
join is already queued (a lone client never waits); 0 turns batching off.

Contents
--------
- :class:`StepQueue` -- the queued requests, what more could join them, and their run.

Example
-------
>>> queue = StepQueue()
>>> queue.add(b"client-a", ensemble_a, frames_nbj, None)          # doctest: +SKIP
>>> [(rid, outputs_nbk.shape) for rid, outputs_nbk in queue.run()]  # doctest: +SKIP
[(b'client-a', (1, 1, 1))]
"""
from __future__ import annotations

import time

from sophia.serving.ensemble import step_together


def _key(ensemble) -> tuple:
    """Ensembles batch together when they hold the very same model objects, in order."""
    return tuple(id(model) for model in ensemble.models)


class StepQueue:
    """Step requests waiting to run, in arrival order, by routing id.

    Attributes
    ----------
    started : float or None
        :func:`time.monotonic` of the first request queued since the last run.
    """

    def __init__(self):
        self._items = []          # (rid, ensemble, frames_nbj, timestamps_b)
        self.started = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, rid: bytes, ensemble, frames_nbj, timestamps_b) -> None:
        """Queue one parsed, checked step request of session ``rid``."""
        if not self._items:
            self.started = time.monotonic()
        self._items.append((rid, ensemble, frames_nbj, timestamps_b))

    def complete(self, ensembles_by_rid) -> bool:
        """Whether no other open session (``{rid: ensemble}``) could join a queued
        request's batch: every session with the same models is queued already."""
        keys = {_key(ensemble) for _, ensemble, _, _ in self._items}
        queued = {rid for rid, _, _, _ in self._items}
        return all(rid in queued for rid, ensemble in ensembles_by_rid.items() if _key(ensemble) in keys)

    def run(self):
        """Run every queued request, one batch per set of models, and empty the queue.

        Yields ``(rid, outputs_nbk)`` per request, or ``(rid, exception)`` for a
        request whose step raised (:func:`step_together`): the caller replies.
        """
        groups = {}
        for item in self._items:
            groups.setdefault(_key(item[1]), []).append(item)
        self._items, self.started = [], None
        for items in groups.values():
            rids, ensembles, frames, stamps = zip(*items)
            yield from zip(rids, step_together(ensembles, frames, stamps))
