"""Issue #14 scratch measurement: the encoding beam scored on the sphere.

A model with ``output_norm`` decodes onto the sphere of its learn set (BENCHMARKS.md, lever
30), so the code worth keeping at the last stage is the one whose *projected* reconstruction
is nearest the vector, not the one whose raw x̂_M is. `ResidualCatalyzer._encode_beam_batch`
scores the last stage that way; here the same beam is run twice on the base, once scoring
the last stage on the sphere and once as decoded (``output_norm`` hidden while encoding), and
both code sets are searched with the library's default search (decoding on the sphere).

Run:  python bench/experiments/beam_sphere.py MODEL DATA BEAM [BEAM ...]
MODEL: a residual model file; one trained before lever 30 gets the learn set's norm as its
``output_norm`` here. One JSON row per (beam, scoring): encode seconds, base MSE of the full
decoder, R@1/10/100 of `Index.search(query, 100)` (BENCHMARKS.md, lever 31).
"""
import json
import os
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from spreadcode import Index, residual  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402


def load_on_sphere(model_path, data):
    """(model, meta) of a residual model file; one written before lever 30 gets the learn
    set's norm (`residual.learn_output_norm`) as its ``output_norm``."""
    model, meta = load_catalyzer(model_path)
    if model.output_norm is None:
        model.output_norm = residual.learn_output_norm(data.learn)
        meta = replace(meta, output_norm=model.output_norm)
    return model, meta


def index_of_codes(model, meta, data, codes):
    """An Index of the model holding ``codes`` uint8 (n_base, code_bytes) for data.base."""
    index = Index.from_catalyzer(model, meta)
    model.encode = lambda vectors, beam=1, precision="auto": codes  # the index adds these
    try:
        index.add(data.base)
    finally:
        del model.encode
    return index


def measure_codes(model, meta, data, codes):
    """What a user would see of ``codes`` uint8 (n_base, code_bytes), one per base vector:
    {"mse": the full decoder's mean squared error on base, "R@k": the default search's
    recall (`Index.search(query, 100)`)}."""
    index = index_of_codes(model, meta, data, codes)
    mse = float(((model.decode(codes) - data.base) ** 2).sum(1).mean())
    ids = index.search(data.query, k=100)[1]
    return {"mse": round(mse, 4), **recall_columns(ids, data.groundtruth)}


def main(model_path, data_path, *beams):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    norm = model.output_norm
    for beam in map(int, beams):
        for scoring in ("on the sphere", "as decoded"):
            model.output_norm = norm if scoring == "on the sphere" else None
            start = time.perf_counter()
            codes = model.encode(data.base, beam=beam)
            seconds = time.perf_counter() - start
            model.output_norm = norm
            print(json.dumps({"beam": beam, "last stage scored": scoring,
                              "encode s": round(seconds, 1),
                              **measure_codes(model, meta, data, codes)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
