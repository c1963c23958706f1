"""How OpenMP threads wait between parallel regions, set before torch's runtime loads.

torch (and the codec's kernels, which share its GNU libgomp) run thousands of small parallel
regions per training epoch and per encoded batch. Between regions libgomp's threads either
spin (its default: 300,000 spins, ~3 ms) or sleep on a futex (``OMP_WAIT_POLICY=PASSIVE``).
Spinning made training 5-10× slower on a 2-core machine shared with other jobs (364 s against
37 s per epoch at batch 64), so spreadcode waited passively; but then every region pays a
futex wake-up, and on an idle 2-core VM a residual model's epoch took 13.3-14.3 s where a
spin of 500 took 10.4-12.4 s (2,000: 9.2-10.1 s), at the price of 1.1× (2,000: 1.45×) slower
epochs beside a busy process (BENCHMARKS.md, "OpenMP wait policy"). So libgomp spins
`SPIN_COUNT` times (~5 µs) before it sleeps, and other runtimes (LLVM's libomp, Intel's)
wait passively.

The variables are read once, when a runtime loads: `spreadcode/__init__.py` calls
`set_wait_policy` before any of its modules imports torch (a program that imports torch
first keeps torch's defaults). A user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins.
"""
from __future__ import annotations

import os

SPIN_COUNT = 500


def set_wait_policy(environ=os.environ):
    """Set ``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT=SPIN_COUNT`` in ``environ`` unless
    either is set already (then the user's settings stand as they are)."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
