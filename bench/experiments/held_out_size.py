"""Issue #14 scratch experiment: the residual default with at most VAL_MAX learn rows held out
(`spreadcode.residual.VAL_MAX`: 6,000 before lever 44, 2,000 since; a tenth of the rows
below that), the rest training. Lever 43 (every row training) gained ~0.3 R@1 but gave up
the held-out report; a smaller held-out set keeps the report and most of the extra rows.

Run:  python bench/experiments/held_out_size.py DATA OUT VAL_MAX [FIELD=VALUE ...]
(the JSON row of residual_variants.py, experiment "held_out_size", with "val_max").
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import residual  # noqa: E402

if __name__ == "__main__":
    residual.VAL_MAX = int(sys.argv.pop(3))
    residual_variants.main(f"held_out_size {residual.VAL_MAX}")
