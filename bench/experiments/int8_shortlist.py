"""Issue #15 check: the residual default search with its shortlist scanned as int8 rows
(`spreadcode.search.Int8Decoder`, the library's default) against float32 vectors, on the same
codes: recall, the share of result ids that differ, and the search time of each (its second
run: the codes and candidates decoded and kept by the first); and the mean squared error per
base vector of the rounding, of the shortlist decoder and of the full decoder.

Run:  python bench/experiments/int8_shortlist.py MODEL DATA [K ...]
(MODEL: a residual model file; K: result sizes, default 10 100). One JSON row per model.
"""
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from spreadcode import Index, search  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402


def main():
    model_path, data = sys.argv[1], load_dataset(sys.argv[2])
    ks = [int(k) for k in sys.argv[3:]] or [10, 100]
    model, meta = load_catalyzer(model_path)
    index = Index.from_catalyzer(model, meta)
    index.add(data.base)
    row = {"model": meta.sha256[:12], "data": data.name}
    codes = model.encode(data.base)
    shortlist = model.decode_shortlist(codes)
    rounded = search.int8_vectors(search.int8_rows(shortlist))
    for name, error in (("rounding", rounded - shortlist),
                        ("shortlist decoder", shortlist - data.base),
                        ("full decoder", model.decode(codes) - data.base)):
        row[f"MSE {name}"] = float(np.mean(np.sum(error.astype(np.float64) ** 2, axis=1)))
    int8_decoder = search.Int8Decoder
    for k in ks:
        results = {}
        for name, wrap in (("int8", int8_decoder), ("float32", lambda decoder: decoder)):
            search.Int8Decoder = wrap
            index.search(data.query, k=k)  # codes and candidates decoded before timing
            start = time.perf_counter()
            _, ids = index.search(data.query, k=k)
            results[name] = ids
            row[f"k{k} {name}"] = {"s": round(time.perf_counter() - start, 2),
                                   **recall_columns(ids, data.groundtruth)}
        search.Int8Decoder = int8_decoder
        row[f"k{k} ids differing %"] = round(100 * float((results["int8"] != results["float32"]).mean()), 3)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
