"""Regenerate the golden .spc files in formats/golden/ and their expected content.

Run from anywhere: ``python formats/make_golden.py``. Each golden ``NAME.spc`` gets a
``NAME.json`` beside it holding the header fields and the decoded content: for lattice codes
the code values (decimal strings: they exceed 64 bits) and the lattice points z, for sign
codes the +-1 vectors, for product codes each block's rank (decimal strings) and the
concatenated lattice points (z_1, ..., z_M); plus the ids if any. tests/test_container.py reads them back, so a
later spreadcode that can no longer read these bytes fails its tests.

The codes are made from fixed pseudo-random vectors plus, for lattice files, the smallest
and largest code of the sphere (code 0 and count - 1, which fills the high word), for product
files the code whose blocks are all 0 and the one whose blocks all hold their largest rank. The
catalyzer SHA-256 is the made-up value 00 01 02 ... 1f, not a real model.
"""
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spreadcode import container, lattice, signs  # noqa: E402
from spreadcode.quantizer import ProductQuantizer  # noqa: E402

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
FAKE_CATALYZER_SHA256 = bytes(range(32))


def lattice_golden(name, d, r2, n_random, seed):
    """Codes of ``n_random`` nearest points to Gaussian vectors, then codes 0 and count-1."""
    y = np.random.default_rng(seed).standard_normal((n_random, d)).astype(np.float32)
    words = lattice.words(d, r2)
    random_codes = lattice.encode(lattice.nearest(y, r2), r2).reshape(n_random, words)
    extremes = [0, lattice.count(d, r2) - 1]
    extreme_codes = np.array([[(v >> (64 * w)) & (2**64 - 1) for w in range(words)]
                              for v in extremes], dtype=np.uint64)
    codes = np.concatenate([random_codes, extreme_codes])
    points = lattice.decode(codes if words > 1 else codes[:, 0], d, r2)
    values = [sum(int(word) << (64 * w) for w, word in enumerate(row)) for row in codes]
    write_golden(name, codes.astype("<u8").view(np.uint8), None,
                 dict(kind="lattice", d=d, param=r2, bits=lattice.bits(d, r2),
                      code_bytes=8 * words, input_dim=96, input_dtype="float32"),
                 {"codes": [str(v) for v in values], "points": points.tolist()})


def sign_golden(name, d, ids, seed):
    """Sign codes of Gaussian vectors, stored with explicit ids."""
    x = np.random.default_rng(seed).standard_normal((len(ids), d)).astype(np.float32)
    codes = signs.pack(x)
    write_golden(name, codes, np.asarray(ids, dtype=np.int64),
                 dict(kind="sign", d=d, param=d, bits=d, code_bytes=codes.shape[1],
                      input_dim=128, input_dtype="uint8"),
                 {"signs": signs.unpack(codes, d).astype(int).tolist()})


def product_golden(name, blocks, n_random, seed):
    """Codes of ``n_random`` Gaussian vectors, then all blocks 0 and all blocks count - 1."""
    q = ProductQuantizer(blocks)
    y = np.random.default_rng(seed).standard_normal((n_random, q.d)).astype(np.float32)
    ranks = [np.concatenate([rank, [0, lattice.count(d, r2) - 1]]).astype(np.uint64)
             for rank, (d, r2) in zip(q.block_codes(q.quantize(y)), blocks)]
    codes = q.join_block_codes(ranks)
    write_golden(name, codes, None,
                 dict(kind="product", d=q.d, param=q.param, bits=q.bits,
                      code_bytes=q.code_bytes, input_dim=96, input_dtype="float32"),
                 {"codes": np.stack(ranks, axis=1).astype(str).tolist(),
                  "points": np.concatenate(q.block_points(codes), axis=1).tolist()})


def write_golden(name, code_bytes, ids, layout, decoded):
    """Write NAME.spc (codes uint8 (n, code_bytes), ids int64 (n,) or None) and NAME.json."""
    metadata = {"creator": "formats/make_golden.py", "source": f"{name} (synthetic)"}
    path = GOLDEN_DIR / f"{name}.spc"
    with container.SpcWriter(path, **layout, catalyzer_sha256=FAKE_CATALYZER_SHA256,
                             metadata=metadata, with_ids=ids is not None) as writer:
        writer.append(code_bytes, ids)
    expected = {
        "header": dict(layout, version=[1, 1 if layout["kind"] == "product" else 0],
                       count=len(code_bytes),
                       catalyzer_sha256=FAKE_CATALYZER_SHA256.hex(),
                       has_ids=ids is not None, metadata=metadata),
        "ids": None if ids is None else ids.tolist(),
        **decoded,
    }
    text = json.dumps(expected, indent=1, ensure_ascii=False)
    innermost_list = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")
    text = innermost_list.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    (GOLDEN_DIR / f"{name}.json").write_text(text + "\n")


def main():
    GOLDEN_DIR.mkdir(exist_ok=True)
    lattice_golden("lattice-d24-r79", d=24, r2=79, n_random=3, seed=1)
    lattice_golden("lattice-d48-r135", d=48, r2=135, n_random=1, seed=2)
    sign_golden("sign-d20-ids", d=20, ids=[10, -3, 2**40, 7], seed=3)
    product_golden("product-4x12-r6", blocks=[(12, 6)] * 4, n_random=3, seed=4)


if __name__ == "__main__":
    main()
