"""faiss baselines: what a user would pick instead of spreadcode.

Every peer is a faiss ``index_factory`` string trained on learn, filled with base and
searched exhaustively for all queries (binary peers rank by Hamming distance, as faiss's
IndexLSH does). faiss-cpu is an optional extra: ``available()`` says whether it is here.
"""
import functools
import importlib.util

import numpy as np

from bench._methods import NotApplicable, Outcome, Stopwatch

# LSQ's defaults (25 training rounds, 16 ILS iterations per encoded vector) took 663 s to
# train and 70 s to encode on wordnet-minilm96 (2 busy cores), for R@10 = 78.2; these take
# half (319 s + 32 s) for R@10 = 75.4. The row's note says so.
LSQ_TRAIN_ITERS = 10
LSQ_ENCODE_ILS_ITERS = 8

# faiss's "PQ8" also trains a polysemous reordering of the code ids (a fixed cost of tens of
# seconds); it only permutes ids, so asymmetric search returns the same results without it
# ("np"). Rows keep the usual names.
TABLE1_FACTORIES = {
    "PQ8": "PQ8np",
    "OPQ8_64,PQ8": "OPQ8_64,PQ8np",
    "OPQ8,PQ8": "OPQ8,PQ8np",
    "LSQ8x8_Nnone": "LSQ8x8_Nnone",
    "RQ8x8_Nnone": "RQ8x8_Nnone",
    "LSQ7x8_Nqint8 (7 B + 1 B norm)": "LSQ7x8_Nqint8",
    "RQ7x8_Nqint8 (7 B + 1 B norm)": "RQ7x8_Nqint8",
}


def available():
    """True when faiss can be imported (the peers are skipped otherwise)."""
    return importlib.util.find_spec("faiss") is not None


def _configure(factory, index):
    """Apply the bounded LSQ schedule; returns the note to show, or ''."""
    import faiss

    if factory.endswith("np"):
        return f"factory {factory} (no polysemous id reordering)"
    lsq = getattr(faiss.downcast_index(index), "lsq", None)
    if lsq is None:
        return ""
    lsq.train_iters = LSQ_TRAIN_ITERS
    lsq.encode_ils_iters = LSQ_ENCODE_ILS_ITERS
    return (f"lsq.train_iters={LSQ_TRAIN_ITERS}, encode_ils_iters={LSQ_ENCODE_ILS_ITERS} "
            "(faiss defaults 25, 16)")


def run_factory(factory, learn, base, query, ctx):
    """Train ``factory`` on learn, add base, search the k nearest of every query -> Outcome.

    learn / base / query: float32 (n, d). Raises NotApplicable when faiss refuses the
    string for this dimension (e.g. PQ8 needs d divisible by 8) or is not installed.
    """
    if not available():
        raise NotApplicable("needs faiss-cpu (pip install 'spreadcode[bench]')")
    import faiss

    d = base.shape[1]
    try:
        index = faiss.index_factory(d, factory)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "refused"
        raise NotApplicable(f"faiss cannot build {factory} for d={d}: {first_line}") from err
    note = _configure(factory, index)
    train, encode, search = Stopwatch(), Stopwatch(), Stopwatch()
    with train.running():
        index.train(learn)
    with encode.running():
        index.add(base)
    with search.running():
        _, ids = index.search(query, ctx.k)
    return Outcome(ids=ids.astype(np.int64), bits=8 * index.sa_code_size(),
                   train_s=train.seconds, encode_s=encode.seconds, search_s=search.seconds,
                   note=note, code=factory.removesuffix("np"))


def factory_method(factory):
    """A table method (learn, base, query, ctx) -> Outcome running one factory string."""
    def method(learn, base, query, ctx):
        return run_factory(factory, learn, base, query, ctx)
    return method


def lsh(learn, base, query, ctx, bits):
    """Random-rotation LSH (sign of ``bits`` random projections), Hamming ranking."""
    return run_factory(f"LSH{bits}r", learn, base, query, ctx)


def itq(learn, base, query, ctx, bits):
    """ITQ (PCA to ``bits`` dims + learned rotation) then signs, Hamming ranking."""
    if bits > base.shape[1]:
        raise NotApplicable(f"ITQ needs bits <= d ({bits} > {base.shape[1]})")
    return run_factory(f"ITQ{bits},LSH", learn, base, query, ctx)


def _subquantizers(bits):
    if bits % 8:
        raise NotApplicable(f"PQ codes whole bytes; {bits} bits is not a multiple of 8")
    return bits // 8


def pq(learn, base, query, ctx, bits):
    """Product quantization with bits/8 sub-quantizers of 256 centroids."""
    m = _subquantizers(bits)
    return run_factory(f"PQ{m}np", learn, base, query, ctx)


def opq(learn, base, query, ctx, bits):
    """PQ after a learned rotation (OPQ, no dimension reduction)."""
    m = _subquantizers(bits)
    return run_factory(f"OPQ{m},PQ{m}np", learn, base, query, ctx)


def _with_norm_byte(kind, bits):
    """faiss additive quantizer ``kind`` (RQ or LSQ) of bits/8 - 1 codebooks of 256 plus one
    byte of quantized norm: at 64 bits this beat the same bytes spent on codebooks alone at
    R@1 and R@10 (Table 1, _Nqint8 vs _Nnone, on both text sets): the peer to beat per size."""
    m = _subquantizers(bits)
    if m < 2:
        raise NotApplicable(f"{kind} with a norm byte needs at least 16 bits")
    return f"{kind}{m - 1}x8_Nqint8"


def rq_norm(learn, base, query, ctx, bits):
    """Residual quantizer (beam 5), bits/8 - 1 bytes of code + 1 byte of norm."""
    return run_factory(_with_norm_byte("RQ", bits), learn, base, query, ctx)


def lsq_norm(learn, base, query, ctx, bits):
    """LSQ (bounded schedule, see LSQ_TRAIN_ITERS), bits/8 - 1 bytes of code + 1 byte of norm."""
    return run_factory(_with_norm_byte("LSQ", bits), learn, base, query, ctx)


TABLE1 = {
    **{name: factory_method(factory) for name, factory in TABLE1_FACTORIES.items()},
    "ITQ64,LSH (Hamming)": functools.partial(itq, bits=64),
    "LSH 64 bits, rotation (Hamming)": functools.partial(lsh, bits=64),
}
TABLE2 = {"LSH": lsh, "ITQ": itq}
FIGURE5 = {"PQ": pq, "OPQ": opq}
# Every faiss compact code at exactly the section's code size, from Figure 5's PQ / OPQ to
# Table 1's best peers (RQ / LSQ with a norm byte) at every size.
QUALITY = {**FIGURE5, "RQ + norm byte": rq_norm, "LSQ + norm byte": lsq_norm}
