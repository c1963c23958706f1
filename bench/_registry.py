"""The registry: every benchmarked method, by table, in display order.

Adding a method = adding one entry here (or in the module dicts merged below). A Table 1
entry is a `Method` (learn, base, query, ctx) -> Outcome; Table 2, Figure 5 and quality
entries are `SweepMethod`s that also take the code size in bits. A method that cannot run at some
setting raises `NotApplicable` and its cell reads "n/a" with the reason.
"""
from bench import _spreadcode_methods, peers
from bench._methods import Method, SweepMethod

TABLE1: dict[str, Method] = {**peers.TABLE1, **_spreadcode_methods.TABLE1}
TABLE2: dict[str, SweepMethod] = {**peers.TABLE2, **_spreadcode_methods.TABLE2}
FIGURE5: dict[str, SweepMethod] = {**peers.FIGURE5, **_spreadcode_methods.FIGURE5}
# spreadcode's default first: the row every other one is read against; then the peers, then
# the default with one thing changed (the ablation).
QUALITY: dict[str, SweepMethod] = {**_spreadcode_methods.QUALITY, **peers.QUALITY,
                                   **_spreadcode_methods.QUALITY_LEVERS}
