"""The default search's recall (k = 100) of saved residual models on DATA, one JSON line each,
over all queries and over the first 2,000 and the rest (raw384_more_queries.py's sets). A model
written before lever 72 gets the re-ranking blend training would give it (its seed-0 held-out
rows), so that it is searched as today's default is.

    python bench/experiments/eval_models.py DATA [--class=SCRIPT.CLASS] MODEL...

--class: models saved by an experiment script whose model class the library does not have
(e.g. --class=twin_heads.TwinHeads), loaded as that class.
"""
import dataclasses
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import torch  # noqa: E402
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from spreadcode import Index, malloc, residual  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402

def evaluate(data, paths, **fields):
    """Print the JSON line of each saved model in ``paths`` on ``data`` (a load_dataset
    Dataset), loaded as `residual.ResidualCatalyzer` is bound now, ``fields`` added to it."""
    malloc.raise_thresholds()
    torch.set_num_threads(2)
    for path in paths:
        model, meta = load_catalyzer(path)[:2]
        if model.rerank_blend is None:  # written before lever 72: calibrated as training does
            _, val_rows = residual.held_out_rows(len(data.learn), 0)
            model.rerank_blend = residual.calibrate_rerank_blend(model, data.learn[val_rows])
            meta = dataclasses.replace(meta, rerank_blend=model.rerank_blend, sha256=None,
                                       path=None)
        index = Index.from_catalyzer(model, meta)
        index.add(data.base)
        _, ids = index.search(data.query, k=100)
        print(json.dumps({"model": path, **fields, "blend": model.rerank_blend,
                          "queries": len(data.query), **recall_columns(ids, data.groundtruth),
                          "first 2k": recall_columns(ids[:2000], data.groundtruth[:2000]),
                          "rest": recall_columns(ids[2000:], data.groundtruth[2000:])}),
              flush=True)


def main():
    paths = sys.argv[2:]
    if paths and paths[0].startswith("--class="):
        script, name = paths.pop(0).split("=", 1)[1].split(".")
        residual.ResidualCatalyzer = getattr(__import__(script), name)  # what the loader builds
    evaluate(load_dataset(sys.argv[1]), paths)


if __name__ == "__main__":
    main()
