"""Issue #14 scratch experiment: the residual default with some of its ResidualConfig fields
changed (encoder or decoder width, batch size, ...), measured as a user would see it.

The config is `spreadcode train`'s default (`spreadcode.training.command_config(bits)`,
epochs and time budget included; bits=N, default 64) with FIELD=VALUE overrides; the model
trains on the learn set, encodes the base greedily and is searched by the default search
(k = 100). The model is
saved to OUT (a .safetensors path; a copy goes to the model store "store" beside it)
for later runs.

Run:  python bench/experiments/residual_variants.py DATA OUT [FIELD=VALUE ...]
One JSON row (appended to results-issue14.jsonl): overrides, epochs run, held-out MSE,
train / encode / search seconds, R@1/10/100.
"""
import json
import os
import sys
import time
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset, recall_columns  # noqa: E402
from spreadcode import Index  # noqa: E402
from spreadcode.catalyzer import save_catalyzer  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.training import command_config  # noqa: E402


def parse_overrides(items):
    """FIELD=VALUE command-line items (VALUE in JSON) -> {FIELD: value}."""
    overrides = {}
    for item in items:
        field, value = item.split("=", 1)
        overrides[field] = json.loads(value)
    return overrides


def variant_config(overrides):
    """`spreadcode train`'s default ResidualConfig for overrides.get("bits", 64), with the
    other overrides (ResidualConfig fields) replaced."""
    return replace(command_config(overrides.get("bits", 64)),
                   **{k: v for k, v in overrides.items() if k != "bits"})


def result_row(experiment, data, overrides, trained, train_s):
    """The JSON row of a trained model (a TrainResult, ``train_s`` seconds to train): its
    epochs and held-out error, then the base encoded greedily and searched by the default
    search (k = 100), timed."""
    index = Index.from_catalyzer(trained.model, trained.meta)
    start = time.time()
    index.add(data.base)
    encode_s = time.time() - start
    start = time.time()
    _, ids = index.search(data.query, k=100)
    search_s = time.time() - start
    best = min(trained.history, key=lambda row: row["val_mse"])
    return {"experiment": experiment, "data": data.name, "overrides": overrides,
            "epochs": len(trained.history), "best_epoch": best["epoch"],
            "val_mse": round(best["val_mse"], 5), "train_s": round(train_s, 1),
            "encode_s": round(encode_s, 1), "search_s": round(search_s, 1),
            **recall_columns(ids, data.groundtruth)}


def train_variant(experiment, data, overrides, model_class=None):
    """Train `variant_config(overrides)` on ``data``'s learn set, with ``model_class`` (a
    ResidualCatalyzer subclass taking its arguments) built instead of the library's model
    when given: (TrainResult, result_row's row)."""
    if model_class is not None:
        residual.ResidualCatalyzer = model_class  # what train_residual builds
    start = time.time()
    trained = residual.train_residual(data.learn, variant_config(overrides), progress=False)
    return trained, result_row(experiment, data, overrides, trained, time.time() - start)


def save_and_append(trained, row, out):
    """Save a trained model to ``out`` (a copy in the model store "store" beside it) and
    append its ``row`` to results-issue14.jsonl."""
    save_catalyzer(trained.model, trained.meta, out,
                   store=os.path.join(os.path.dirname(os.path.abspath(out)), "store"))
    append_row(row)


def run_model_class(experiment, model_class, lever, **fields):
    """The command line of a script whose variant is a model class (``DATA OUT [FIELD=VALUE
    ...]``): train it, tag its row with ``lever`` and ``fields`` (the variant's own
    settings), save the model and append the row."""
    data, out = load_dataset(sys.argv[1]), sys.argv[2]
    trained, row = train_variant(experiment, data, parse_overrides(sys.argv[3:]), model_class)
    row.update(lever=lever, **fields)
    save_and_append(trained, row, out)


def main(experiment="residual_variants"):
    data, out = load_dataset(sys.argv[1]), sys.argv[2]
    trained, row = train_variant(experiment, data, parse_overrides(sys.argv[3:]))
    save_and_append(trained, row, out)


if __name__ == "__main__":
    main()
