"""Issue #14 scratch experiment: the residual default trained on every learn row, the
held-out tenth included (it still picks the best epoch and reports a "held-out" error, which
is then an error on training rows). The models are data-limited (BENCHMARKS.md, lever 22),
so the tenth kept aside for the epoch choice may be worth more as training data.

Run:  python bench/experiments/all_rows.py DATA OUT [FIELD=VALUE ...]
(the arguments and the JSON row of residual_variants.py, experiment "all_rows").
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import residual  # noqa: E402

_split = residual.held_out_rows


def every_row_trains(n, seed):
    """All n rows train; the usual held-out rows are still returned for the epoch choice."""
    _, held_out = _split(n, seed)
    return np.arange(n, dtype=np.int64), held_out


if __name__ == "__main__":
    residual.held_out_rows = every_row_trains
    residual_variants.main("all_rows")
