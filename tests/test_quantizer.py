"""Quantizer objects: attributes, quantize/reconstruct, byte round trips, search dispatch."""
import math

import numpy as np
import pytest

from spreadcode import lattice, signs
from spreadcode.errors import SpreadcodeError
from spreadcode.quantizer import LatticeQuantizer, SignQuantizer, quantizer_from_spec


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
    with pytest.raises(SpreadcodeError, match="unknown quantizer kind"):
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
