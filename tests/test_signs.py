"""Sign codes: bit-exact packing, Hamming distances, and the sign scans against brute force."""
import numpy as np
import pytest

from spreadcode import signs
from spreadcode.errors import SpreadcodeError


def reference_topk(dist, k):
    """(distance, id) order, padded with inf / -1 to k columns."""
    n = dist.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(n), dist.shape), dist), axis=1)[:, :k]
    out_d = np.full((dist.shape[0], k), np.inf, np.float32)
    out_i = np.full((dist.shape[0], k), -1, np.int64)
    out_d[:, :order.shape[1]] = np.take_along_axis(dist, order, axis=1)
    out_i[:, :order.shape[1]] = order
    return out_d, out_i


def reference_hamming(a, b):
    """Bit counts of a XOR b for every pair: float32 (len(a), len(b))."""
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2).astype(np.float32)


# ---------------------------------------------------------------- packing

def test_bit_layout_is_little_endian_within_bytes():
    x = np.array([[1, -1, 0, 2, -3, 0.5, -0.0, 7, 1, 0]], dtype=np.float32)
    # bits 0, 3, 5, 7 of byte 0 and bit 0 of byte 1 are set
    assert signs.pack(x).tolist() == [[0b10101001, 0b00000001]]


@pytest.mark.parametrize("d", [1, 7, 8, 9, 24, 63, 64, 65, 96])
def test_pack_matches_numpy_packbits(d):
    rng = np.random.default_rng(d)
    x = rng.standard_normal((300, d)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0
    codes = signs.pack(x)
    assert codes.dtype == np.uint8 and codes.shape == (300, (d + 7) // 8)
    assert np.array_equal(codes, np.packbits(x > 0, axis=1, bitorder="little"))
    assert np.array_equal(signs.unpack(codes, d), np.where(x > 0, 1, -1).astype(np.float32))


def test_hamming_counts_differing_bits():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (500, 12), dtype=np.uint8)
    b = rng.integers(0, 256, (500, 12), dtype=np.uint8)
    expected = np.unpackbits(a ^ b, axis=1).sum(axis=1)
    out = signs.hamming(a, b)
    assert out.dtype == np.int32 and np.array_equal(out, expected)
    assert np.array_equal(signs.hamming(a[:1], b), np.unpackbits(a[:1] ^ b, axis=1).sum(axis=1))
    assert np.array_equal(signs.hamming(a, b[3:4]), np.unpackbits(a ^ b[3:4], axis=1).sum(axis=1))


def test_empty_inputs():
    assert signs.pack(np.zeros((0, 10), np.float32)).shape == (0, 2)
    assert signs.unpack(np.zeros((0, 2), np.uint8), 10).shape == (0, 10)
    assert signs.hamming(np.zeros((0, 2), np.uint8), np.zeros((1, 2), np.uint8)).shape == (0,)
    distances, ids = signs.asymmetric_search(np.zeros((0, 2), np.uint8), 16, np.ones((3, 16), np.float32), 2)
    assert np.array_equal(ids, -np.ones((3, 2))) and np.isinf(distances).all()
    distances, ids = signs.hamming_search(np.zeros((4, 2), np.uint8), np.zeros((0, 2), np.uint8), 2)
    assert distances.shape == ids.shape == (0, 2)
    lims, ids, distances = signs.asymmetric_range_search(np.zeros((0, 2), np.uint8), 16, np.ones((1, 16), np.float32), 9.0)
    assert lims.tolist() == [0, 0] and ids.shape == distances.shape == (0,)


@pytest.mark.parametrize("call, message", [
    (lambda: signs.pack(np.ones((2, 8), np.float64)), "float32"),
    (lambda: signs.pack(np.array([[np.inf]], np.float32)), "NaN or infinite"),
    (lambda: signs.unpack(np.zeros((2, 2), np.uint8), 17), "3 bytes"),
    (lambda: signs.unpack(np.full((1, 2), 255, np.uint8), 10), "padding"),
    (lambda: signs.unpack(np.zeros((1, 3), np.uint8), 10), "2 bytes"),
    (lambda: signs.unpack(np.zeros((1, 2), np.int8), 10), "uint8"),
    (lambda: signs.hamming(np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8)), "rows"),
    (lambda: signs.hamming(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8)), "bytes"),
    (lambda: signs.hamming_search(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 1), "2 bytes"),
    (lambda: signs.asymmetric_search(np.zeros((2, 2), np.uint8), 16, np.ones((1, 15), np.float32), 1), "16 columns"),
    (lambda: signs.asymmetric_search(np.zeros((2, 2), np.uint8), 16, np.ones((1, 16), np.float32), -1), "k"),
])
def test_bad_input_is_refused_clearly(call, message):
    with pytest.raises(SpreadcodeError, match=message):
        call()


# ---------------------------------------------------------------- scans

@pytest.mark.parametrize("n, k, threads", [(9000, 10, 2), (9000, 25, 1), (40, 60, 2)])
def test_hamming_search_equals_brute_force(n, k, threads):
    rng = np.random.default_rng(n + k)
    db = signs.pack(rng.standard_normal((n, 16)).astype(np.float32))   # 16 bits: many ties
    queries = signs.pack(rng.standard_normal((31, 16)).astype(np.float32))
    distances, ids = signs.hamming_search(db, queries, k, threads=threads)
    ref_d, ref_i = reference_topk(reference_hamming(queries, db), k)
    assert distances.dtype == np.float32 and ids.dtype == np.int64
    assert np.array_equal(ids, ref_i) and np.array_equal(distances, ref_d)


@pytest.mark.parametrize("n, k, threads", [(9000, 10, 2), (5000, 3, 1), (7, 9, 2)])
def test_asymmetric_search_equals_brute_force(n, k, threads):
    d = 16                                                # 2 / sqrt(d) = 0.5: exact
    rng = np.random.default_rng(n * k)
    db = signs.pack(rng.standard_normal((n, d)).astype(np.float32))
    queries = (rng.integers(-8, 9, (29, d)) / 8).astype(np.float32)
    distances, ids = signs.asymmetric_search(db, d, queries, k, threads=threads)
    dist = np.float32(2) - (queries @ signs.unpack(db, d).T) * np.float32(0.5)
    ref_d, ref_i = reference_topk(dist, k)
    assert np.array_equal(ids, ref_i) and np.array_equal(distances, ref_d)


def test_searches_in_small_query_batches_give_the_same_results(monkeypatch):
    from spreadcode import _codec
    rng = np.random.default_rng(7)
    db = signs.pack(rng.standard_normal((3000, 40)).astype(np.float32))
    queries = rng.standard_normal((30, 40)).astype(np.float32)
    expected = [signs.hamming_search(db, signs.pack(queries), 5), signs.asymmetric_search(db, 40, queries, 5)]
    monkeypatch.setattr(_codec, "TOPK_HEAP_ENTRIES", 1)           # one query per batch
    got = [signs.hamming_search(db, signs.pack(queries), 5), signs.asymmetric_search(db, 40, queries, 5)]
    for pair_got, pair_want in zip(got, expected):
        for a, b in zip(pair_got, pair_want):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("d", [64, 128, 200])
def test_asymmetric_search_in_high_dimension(d):
    rng = np.random.default_rng(d)
    db = signs.pack(rng.standard_normal((3000, d)).astype(np.float32))
    queries = rng.standard_normal((9, d)).astype(np.float32)
    distances, ids = signs.asymmetric_search(db, d, queries, 4)
    dist = 2 - (queries.astype(np.float64) @ signs.unpack(db, d).T) * (2 / np.sqrt(d))
    np.testing.assert_allclose(distances, np.take_along_axis(dist, ids, axis=1), atol=1e-4)
    np.testing.assert_allclose(distances, np.sort(dist, axis=1)[:, :4], atol=1e-4)


def test_range_searches_equal_brute_force():
    rng = np.random.default_rng(9)
    d = 16
    db = signs.pack(rng.standard_normal((6000, d)).astype(np.float32))
    queries = (rng.integers(-8, 9, (13, d)) / 8).astype(np.float32)
    for lims, ids, distances, dist, radius in [
        (*signs.asymmetric_range_search(db, d, queries, 1.0),
         np.float32(2) - (queries @ signs.unpack(db, d).T) * np.float32(0.5), 1.0),
        (*signs.hamming_range_search(db, signs.pack(queries), 3),
         reference_hamming(signs.pack(queries), db), 3),
    ]:
        assert lims.shape == (14,) and lims[0] == 0
        for q in range(len(queries)):
            hit = np.nonzero(dist[q] <= radius)[0]
            order = hit[np.lexsort((hit, dist[q, hit]))]
            assert np.array_equal(ids[lims[q]:lims[q + 1]], order)
            assert np.array_equal(distances[lims[q]:lims[q + 1]], dist[q, order])


def test_dimension_limit():
    assert signs.code_bytes(signs.MAX_DIM) == signs.MAX_DIM // 8
    for call in (lambda: signs.code_bytes(signs.MAX_DIM + 1),
                 lambda: signs.unpack(np.zeros((1, 1), np.uint8), 2**32 - 1),
                 lambda: signs.asymmetric_search(np.zeros((1, 1), np.uint8), 2**32 - 1,
                                                 np.zeros((1, 8), np.float32), 1)):
        with pytest.raises(SpreadcodeError, match="above the limit of 1048576"):
            call()
