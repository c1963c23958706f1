"""Quantizer objects: attributes, quantize/reconstruct, byte round trips, search dispatch."""
import itertools
import math

import numpy as np
import pytest

from spreadcode import lattice, quantizer, signs
from spreadcode.errors import SpreadcodeError
from spreadcode.quantizer import (LatticeQuantizer, ProductQuantizer, QuantizerSpec, SignQuantizer,
                                  describe_code, describe_quantizer, quantizer_from_spec,
                                  quantizer_spec)


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("d, r2, nbits, words", [(24, 79, 64, 1), (24, 3, 14, 1), (48, 135, 128, 2), (64, 66, 128, 2)])
def test_lattice_quantizer_attributes(d, r2, nbits, words):
    q = LatticeQuantizer(d, r2)
    assert (q.kind, q.d, q.param, q.bits, q.words) == ("lattice", d, r2, nbits, words)
    assert q.code_bytes == 8 * words and q.code_dtype == np.uint64
    assert q.code_shape == (() if words == 1 else (words,))


def test_sign_quantizer_attributes():
    q = SignQuantizer(20)
    assert (q.kind, q.d, q.param, q.bits, q.code_bytes) == ("sign", 20, 20, 20, 3)
    assert q.code_dtype == np.uint8 and q.code_shape == (3,)


@pytest.mark.parametrize("d, r2", [(24, 79), (48, 135)])
def test_lattice_quantize_and_reconstruct(d, r2):
    rng = np.random.default_rng(d)
    x = unit_rows(rng, 500, d) * 3.0                 # any norm
    q = LatticeQuantizer(d, r2)
    codes = q.quantize(x)
    assert np.array_equal(codes, lattice.encode(lattice.nearest(x, r2), r2))
    rec = q.reconstruct(codes)
    assert rec.dtype == np.float32 and rec.shape == x.shape
    np.testing.assert_allclose(np.linalg.norm(rec, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rec * np.float32(math.sqrt(r2)), lattice.nearest(x, r2), atol=1e-5)


def test_sign_quantize_and_reconstruct():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 20)).astype(np.float32)
    q = SignQuantizer(20)
    codes = q.quantize(x)
    assert np.array_equal(codes, signs.pack(x))
    rec = q.reconstruct(codes)
    assert np.array_equal(rec, np.where(x > 0, 1, -1).astype(np.float32) / np.float32(math.sqrt(20)))


@pytest.mark.parametrize("d, r2", [(24, 79), (48, 135)])
def test_lattice_codes_bytes_are_little_endian_integers(d, r2):
    rng = np.random.default_rng(2)
    q = LatticeQuantizer(d, r2)
    codes = q.quantize(unit_rows(rng, 50, d))
    buf = q.codes_to_bytes(codes)
    assert buf.dtype == np.uint8 and buf.shape == (50, q.code_bytes)
    words = codes.reshape(50, -1)
    for row, code_words in zip(buf, words):
        assert int.from_bytes(row.tobytes(), "little") == sum(int(w) << (64 * i) for i, w in enumerate(code_words))
    assert np.array_equal(q.codes_from_bytes(buf), codes)


def test_codes_from_bytes_refuses_invalid_codes():
    q = LatticeQuantizer(24, 79)
    with pytest.raises(SpreadcodeError, match="not a valid code"):
        q.codes_from_bytes(np.full((2, 8), 255, np.uint8))
    with pytest.raises(SpreadcodeError, match=r"\(n, 8\)"):
        q.codes_from_bytes(np.zeros((2, 7), np.uint8))
    with pytest.raises(SpreadcodeError, match="padding"):
        SignQuantizer(20).codes_from_bytes(np.full((1, 3), 255, np.uint8))


def test_sign_codes_bytes_round_trip():
    q = SignQuantizer(20)
    codes = q.quantize(np.random.default_rng(3).standard_normal((10, 20)).astype(np.float32))
    assert np.array_equal(q.codes_from_bytes(q.codes_to_bytes(codes)), codes)


def test_search_dispatches_to_the_kind():
    rng = np.random.default_rng(4)
    x, queries = unit_rows(rng, 3000, 24), unit_rows(rng, 12, 24)
    lq = LatticeQuantizer(24, 79)
    codes = lq.quantize(x)
    for got, want in zip(lq.search(codes, queries, 5), lattice.search(codes, 24, 79, queries, 5)):
        assert np.array_equal(got, want)
    for got, want in zip(lq.range_search(codes, queries, 0.9), lattice.range_search(codes, 24, 79, queries, 0.9)):
        assert np.array_equal(got, want)
    sq = SignQuantizer(24)
    scodes = sq.quantize(x)
    for got, want in zip(sq.search(scodes, queries, 5), signs.asymmetric_search(scodes, 24, queries, 5)):
        assert np.array_equal(got, want)
    for got, want in zip(sq.search(scodes, queries, 5, hamming=True),
                         signs.hamming_search(scodes, signs.pack(queries), 5)):
        assert np.array_equal(got, want)
    for got, want in zip(sq.range_search(scodes, queries, 4, hamming=True),
                         signs.hamming_range_search(scodes, signs.pack(queries), 4)):
        assert np.array_equal(got, want)


def test_search_ranks_reconstructions_by_distance():
    rng = np.random.default_rng(5)
    x, queries = unit_rows(rng, 2000, 32), unit_rows(rng, 10, 32)
    for q in (LatticeQuantizer(32, 36), SignQuantizer(32)):
        codes = q.quantize(x)
        distances, ids = q.search(codes, queries, 7)
        rec = q.reconstruct(codes)
        exact = ((queries[:, None, :] - rec[None, :, :]) ** 2).sum(axis=2)
        np.testing.assert_allclose(distances, np.take_along_axis(exact, ids, axis=1), atol=1e-5)
        np.testing.assert_allclose(distances, np.sort(exact, axis=1)[:, :7], atol=1e-5)


def test_quantizer_from_spec():
    assert repr(quantizer_from_spec("lattice", 24, 79)) == "LatticeQuantizer(d=24, r2=79)"
    assert repr(quantizer_from_spec("sign", 16, 16)) == "SignQuantizer(d=16)"
    with pytest.raises(SpreadcodeError, match="unknown quantizer kind 'pq' .*'product'"):
        quantizer_from_spec("pq", 16, 8)
    with pytest.raises(SpreadcodeError, match="must equal d"):
        quantizer_from_spec("sign", 16, 8)
    with pytest.raises(SpreadcodeError, match="atoms"):
        quantizer_from_spec("lattice", 32, 701)


def test_quantize_checks_the_dimension():
    with pytest.raises(SpreadcodeError, match="24 columns"):
        LatticeQuantizer(24, 79).quantize(np.zeros((2, 23), np.float32))
    with pytest.raises(SpreadcodeError, match="20 columns"):
        SignQuantizer(20).quantize(np.zeros((2, 16), np.float32))


# ---- product of spherical lattices ---------------------------------------------------------

SMALL = ((2, 1), (3, 2))  # |S(2, 1)| = 4, |S(3, 2)| = 12: 48 product points, 2 + 4 bits


def all_small_codes():
    """Every code of the SMALL product, ranks in lexicographic order: uint8 (48, 2)."""
    ranks = np.array(list(itertools.product(range(4), range(12))), dtype=np.uint64)
    return ProductQuantizer(SMALL).join_block_codes([ranks[:, 0].copy(), ranks[:, 1].copy()])


def test_product_quantizer_attributes():
    q = ProductQuantizer([[12, 6], (8, 16), (12, 6)])
    assert (q.kind, q.d, q.param) == ("product", 32, ((12, 6), (8, 16), (12, 6)))
    assert (q.bits, q.code_bytes, q.block_bytes) == (16 + 17 + 16, 2 + 3 + 2, (2, 3, 2))
    assert q.code_dtype == np.uint8 and q.code_shape == (7,) and not q.has_hamming
    assert [repr(b) for b in q.blocks] == ["LatticeQuantizer(d=12, r2=6)",
                                           "LatticeQuantizer(d=8, r2=16)",
                                           "LatticeQuantizer(d=12, r2=6)"]
    assert repr(q) == "ProductQuantizer([[12, 6], [8, 16], [12, 6]])"
    assert describe_quantizer(q) == "product d=32 S(12,6)+S(8,16)+S(12,6)"
    assert describe_code("product", 48, ((12, 6),) * 4) == "product of 4 lattices 4×S(12, r²=6)"
    assert describe_code(q.kind, q.d, q.param) == \
        "product of 3 lattices S(12, r²=6)+S(8, r²=16)+S(12, r²=6)"


def test_product_code_is_a_bijection_on_small_blocks():
    """Every combination of ranks: ranks <-> bytes <-> points, rows of the spec's layout."""
    q = ProductQuantizer(SMALL)
    codes = all_small_codes()
    assert codes.shape == (48, 2) and q.code_bytes == 2
    ranks = q.block_codes(codes)
    expected = np.array(list(itertools.product(range(4), range(12))), dtype=np.uint64)
    np.testing.assert_array_equal(np.stack(ranks, axis=1), expected)
    np.testing.assert_array_equal(codes[:, 0], expected[:, 0])  # block 0: byte 0
    np.testing.assert_array_equal(codes[:, 1], expected[:, 1])  # block 1: byte 1
    points = q.block_points(codes)
    for z, rank, (d, r2) in zip(points, ranks, SMALL):
        assert z.dtype == np.int8 and z.shape == (48, d)
        assert ((z.astype(int) ** 2).sum(axis=1) == r2).all()
        np.testing.assert_array_equal(lattice.encode(z, r2), rank)
    joined = np.concatenate(points, axis=1)
    assert len(np.unique(joined, axis=0)) == 48  # every point once
    rec = q.reconstruct(codes)
    np.testing.assert_allclose(rec, joined / np.repeat([math.sqrt(2), math.sqrt(4)], [2, 3]),
                               rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rec, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(q.quantize(rec), codes)  # each point is its own nearest
    assert np.array_equal(q.codes_from_bytes(q.codes_to_bytes(codes)), codes)


def test_product_nearest_point_is_the_brute_force_one():
    q = ProductQuantizer(SMALL)
    every = q.reconstruct(all_small_codes())
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 5)).astype(np.float32) * 3
    x[0, :2] = 0  # an all-zero block still gets a valid, fixed code: rank 0
    x[1] = 0
    codes = q.quantize(x)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    best = (unit.astype(np.float64) @ every.T.astype(np.float64)).max(axis=1)
    got = (unit.astype(np.float64) * q.reconstruct(codes)).sum(axis=1)
    np.testing.assert_allclose(got, best, atol=1e-6)
    ranks = q.block_codes(codes)
    assert ranks[0][0] == 0 and ranks[0][1] == ranks[1][1] == 0
    np.testing.assert_array_equal(q.quantize(x[:2]), codes[:2])


def brute_force(q, codes, queries):
    """float32 (nq, n) distances 2 - 2 <q, x_hat> over reconstruct(), as the spec says."""
    rec = q.reconstruct(codes).astype(np.float64)
    return (2.0 - 2.0 * queries.astype(np.float64) @ rec.T).astype(np.float32)


@pytest.mark.parametrize("chunk", [None, (7, 3)])
def test_product_search_equals_brute_force_with_ties_to_the_lower_id(monkeypatch, chunk):
    if chunk:  # many code chunks and query batches, merged
        monkeypatch.setattr(quantizer, "_SCAN_CODES", chunk[0])
        monkeypatch.setattr(quantizer, "_SCAN_QUERIES", chunk[1])
    q = ProductQuantizer(SMALL)
    rng = np.random.default_rng(8)
    codes = all_small_codes()[rng.integers(0, 48, 300)]  # many duplicates: exact ties
    queries = unit_rows(rng, 10, 5)
    queries[0] = q.reconstruct(codes[:1])[0]
    exact = brute_force(q, codes, queries)
    for k in (1, 5, 40, 300):
        distances, ids = q.search(codes, queries, k)
        order = np.lexsort((np.broadcast_to(np.arange(300), exact.shape), exact), axis=1)[:, :k]
        np.testing.assert_array_equal(ids, order)
        np.testing.assert_array_equal(distances, np.take_along_axis(exact, order, axis=1))
    distances, ids = q.search(codes[:3], queries, 5)  # fewer codes than k: padding
    assert (ids[:, 3:] == -1).all() and np.isinf(distances[:, 3:]).all()
    np.testing.assert_array_equal(np.sort(ids[:, :3], axis=1), np.tile([0, 1, 2], (10, 1)))
    for radius in (0.0, 0.5, 1.2, 4.0):
        lims, found, dist = q.range_search(codes, queries, radius)
        for row in range(10):
            want = np.flatnonzero(exact[row] <= radius)
            want = want[np.lexsort((want, exact[row][want]))]
            np.testing.assert_array_equal(found[lims[row]:lims[row + 1]], want)
            np.testing.assert_array_equal(dist[lims[row]:lims[row + 1]], exact[row][want])
    assert lims.dtype == found.dtype == np.int64 and dist.dtype == np.float32


def test_product_search_of_realistic_blocks_matches_reconstruct():
    q = ProductQuantizer([(12, 6)] * 4)
    rng = np.random.default_rng(9)
    codes = q.quantize(unit_rows(rng, 3000, 48))
    queries = unit_rows(rng, 20, 48)
    distances, ids = q.search(codes, queries, 10)
    exact = brute_force(q, codes, queries)
    np.testing.assert_array_equal(distances, np.sort(exact, axis=1)[:, :10])
    np.testing.assert_array_equal(distances, np.take_along_axis(exact, ids, axis=1))
    empty = q.search(codes[:0], queries, 2)
    assert (empty[1] == -1).all()


def test_product_codes_from_bytes_refuses_out_of_range_ranks():
    q = ProductQuantizer(SMALL)
    codes = all_small_codes()
    bad = codes.copy()
    bad[5, 1] = 12
    with pytest.raises(SpreadcodeError, match=r"^codes block 1 row 5 is not a valid code of "
                                              r"S\(d=3, r2=2\): codes must be below count = 12$"):
        q.codes_from_bytes(bad)
    bad = codes.copy()
    bad[2, 0] = 4  # a high bit of block 0's byte
    with pytest.raises(SpreadcodeError, match="block 0 row 2 is not a valid code"):
        q.reconstruct(bad)
    with pytest.raises(SpreadcodeError, match=r"code bytes must be a uint8 array of shape \(n, 2\)"):
        q.codes_from_bytes(np.zeros((2, 3), np.uint8))
    with pytest.raises(SpreadcodeError, match=r"codes must be a uint8 array of shape \(n, 2\)"):
        q.search(codes.astype(np.uint16), unit_rows(np.random.default_rng(0), 1, 5), 1)


def test_join_block_codes_checks_its_ranks():
    q = ProductQuantizer(SMALL)
    with pytest.raises(SpreadcodeError, match="ranks must be a list of 2 uint64"):
        q.join_block_codes([np.zeros(3, np.uint64)])
    with pytest.raises(SpreadcodeError, match=r"ranks\[1\] has 2 rows, ranks\[0\] has 3"):
        q.join_block_codes([np.zeros(3, np.uint64), np.zeros(2, np.uint64)])
    with pytest.raises(SpreadcodeError, match=r"ranks\[0\] row 1 is not a valid code of S\(d=2"):
        q.join_block_codes([np.array([3, 4], np.uint64), np.zeros(2, np.uint64)])
    with pytest.raises(SpreadcodeError, match=r"ranks\[1\] must be a uint64 array"):
        q.join_block_codes([np.zeros(2, np.uint64), np.zeros(2, np.int64)])


@pytest.mark.parametrize("blocks, message", [
    ([], "product blocks must be a list of 1 to 64"),
    ([(2, 1)] * 65, "product blocks must be a list of 1 to 64"),
    ("12:6", "product blocks must be a list of 1 to 64"),
    ([(12, 6), (3,)], r"product block 1 must be a \(d, r2\) pair"),
    ([(12, 6), (3, 7)], r"product block 1: S\(d=3, r2=7\) is empty"),
    ([(True, 6)], "product block 0: d must be an integer"),
    ([(64, 100)], "needs 147-bit codes, above the 64-bit limit of a product block"),
])
def test_product_blocks_are_checked(blocks, message):
    with pytest.raises(SpreadcodeError, match=message):
        ProductQuantizer(blocks)


def test_product_spec_json_round_trip_and_errors():
    value = {"kind": "product", "d": 48, "param": [[12, 6], [12, 6], [12, 6], [12, 6]]}
    spec = QuantizerSpec.from_json(value, "model.catalyzer")
    assert spec == QuantizerSpec("product", 48, ((12, 6),) * 4)
    assert hash(spec) == hash(QuantizerSpec("product", 48, ((12, 6),) * 4))
    assert spec.to_json() == value
    assert quantizer_spec("product", 48, ((12, 6),) * 4) == value
    assert repr(spec.quantizer()) == "ProductQuantizer([[12, 6], [12, 6], [12, 6], [12, 6]])"
    assert repr(quantizer_from_spec(**value)) == repr(spec.quantizer())
    for bad, why in [
        ({**value, "d": 47}, "product quantizer d must be the sum of its blocks' dimensions, 48, got 47"),
        ({**value, "param": 4}, "product blocks must be a list"),
        ({**value, "param": [[12, 6], [12, "6"]]}, "product block 1: r2 must be an integer"),
        ({**value, "param": [[12, 6], [12]]}, r"product block 1 must be a \(d, r2\) pair"),
    ]:
        with pytest.raises(SpreadcodeError, match=rf"^model.catalyzer \(bad 'quantizer': {why}"):
            QuantizerSpec.from_json(bad, "model.catalyzer")
