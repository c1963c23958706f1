"""Issue #15 (search speed) scratch experiment, row 13 of BENCHMARKS.md's issue #14 levers:
how many shortlist candidates the full decoder must re-rank.

The default search of a residual model re-ranked the shortlist decoder's top max(2·k, 200)
by the full decoder, which is most of the search time at 1M codes (about 5 M multiply-adds
per candidate; max(2·k, 50) since this experiment). Lever 12 of BENCHMARKS.md suggested that
R@1 and R@10 are already reached with the top 100. Here the base is encoded once and searched with each (k, rerank) pair.

Run:  python bench/experiments/rerank_depth.py MODEL DATA
One JSON row per (k, rerank): R@1/10(/100) and search seconds (appended to
results-issue14.jsonl).
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset, recall_columns  # noqa: E402
from spreadcode import Index  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402

PAIRS = [(10, 20), (10, 30), (10, 50), (10, 100), (10, 200), (100, 100), (100, 150), (100, 200)]


def main():
    model, data = sys.argv[1], load_dataset(sys.argv[2])
    index = Index.from_catalyzer(*load_catalyzer(model))
    index.add(data.base)
    index.search(data.query[:1], k=10)  # decodes the codes once for the timed searches
    for k, rerank in PAIRS:
        start = time.time()
        _, ids = index.search(data.query, k=k, rerank=rerank)
        seconds = time.time() - start
        ks = (1, 10) if k == 10 else (1, 10, 100)
        row = {"experiment": "rerank_depth", "model": os.path.basename(model),
               "data": data.name, "k": k, "rerank": rerank, "search_s": round(seconds, 2),
               **recall_columns(ids, data.groundtruth, ks)}
        append_row(row)


if __name__ == "__main__":
    main()
