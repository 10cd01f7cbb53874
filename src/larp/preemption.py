"""Preemption signals: SLURM sends SIGTERM (or, with ``--signal``, SIGUSR1) before it kills a job.

A preempted training job exits with ``PREEMPTED_EXIT_CODE`` (75, EX_TEMPFAIL) so that SLURM marks it failed
and Snakemake resubmits it; the new job resumes from the last checkpoint (see :mod:`larp.train.loop`, which
takes the signals over while it trains and checkpoints before it exits).

This module imports nothing heavy, so the training commands install :func:`exit_on_preemption` as the very
first thing they do: a signal that arrives while torch is imported or the data is loaded has nothing to save
and exits with 75 at once, instead of the default 143 that nobody retries.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _exit_preempted(signum: int, frame: object) -> None:
    raise SystemExit(PREEMPTED_EXIT_CODE)


@contextmanager
def exit_on_preemption() -> Iterator[None]:
    """Within: SIGTERM / SIGUSR1 exit the process with code 75 (until the training loop takes them over).

    The signals are also unblocked: a launcher that blocks them would otherwise leave them pending. The
    previous handlers and mask come back afterwards (for callers of ``larp.cli.main`` in a process of theirs).
    """
    previous = {s: signal.signal(s, _exit_preempted) for s in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            signal.signal(s, handler)
