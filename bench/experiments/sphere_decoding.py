"""Issue #14 scratch measurement: where a residual model's decoded vectors lie, and how they
rank once put back on the sphere that the data lies on.

Text embeddings (L2-normalised by their model) and SIFT descriptors (normalised to 512 before
rounding) all have one norm. The MSE-optimal decoder shrinks each decoded vector towards the
mean by its uncertainty, so decoded norms spread, and ‖q − x̂‖² mixes that spread into the
ranking. Three ways to rank the same codes, by exhaustive search of the decoded base:
``as decoded`` (‖q − x̂‖²), ``on the sphere`` (x̂ scaled to the learn set's norm: what
`ResidualCatalyzer.output_norm` does), ``inner product`` (−2⟨q, x̂⟩ + E‖x‖², the expected
squared distance given the code when every ‖x‖ is the same). Then the library's default
search (`Index`) with the model as it is.

Run:  python bench/experiments/sphere_decoding.py MODEL DATA
Prints the base's and the decoded vectors' norms (1st / 50th / 99th percentiles), then one
JSON row per ranking: base MSE and R@1/10/100 (BENCHMARKS.md, "Issue #14 levers", row 30).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from spreadcode import Index  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402
from spreadcode.search import recall_at  # noqa: E402


def row(name, decoded, ids, data):
    mse = None if decoded is None else round(float(((decoded - data.base) ** 2).sum(1).mean()), 4)
    return json.dumps({"ranking": name, "mse": mse, **{
        f"R@{k}": round(100 * v, 1) for k, v in recall_at(ids, data.groundtruth).items()}})


def main(model_path, data_path):
    torch.set_num_threads(2)
    model, meta = load_catalyzer(model_path)
    data = load_dataset(data_path)
    radius = float(np.linalg.norm(data.learn, axis=1).mean())
    codes = model.encode(data.base)
    kept, model.output_norm = model.output_norm, None
    decoded = model.decode(codes)
    model.output_norm = kept
    norms = np.linalg.norm(decoded, axis=1)
    print("norms: base", np.percentile(np.linalg.norm(data.base, axis=1), [1, 50, 99]).round(4),
          "decoded", np.percentile(norms, [1, 50, 99]).round(4), flush=True)
    on_sphere = decoded * (radius / np.maximum(norms, 1e-12))[:, None]
    for name, db in (("as decoded", decoded), ("on the sphere", on_sphere)):
        print(row(name, db, exact_knn(db, data.query, 100)[1], data), flush=True)
    # −2⟨q, x̂⟩ + r² as an L2 search: x̂ gets the coordinate sqrt(r² − ‖x̂‖²), q a zero.
    lifted = np.hstack([decoded, np.sqrt(np.maximum(radius ** 2 - norms ** 2, 0))[:, None]])
    queries = np.hstack([data.query, np.zeros((len(data.query), 1), np.float32)])
    print(row("inner product", None, exact_knn(lifted.astype(np.float32), queries, 100)[1],
              data), flush=True)
    index = Index.from_catalyzer(model, meta)
    index.add(data.base)
    print(row(f"default search (output_norm {model.output_norm})", None,
              index.search(data.query, k=100)[1], data), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
