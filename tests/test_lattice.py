"""Spherical lattice S(d, r2): counts, atoms, the code bijection of the lattice.py spec,
exact nearest points, and the scan kernels against numpy brute force."""
import itertools
import math

import numpy as np
import pytest

from spreadcode import lattice
from spreadcode.errors import SpreadcodeError

SMALL = [(1, 1), (1, 4), (2, 1), (2, 2), (2, 5), (3, 2), (3, 3), (3, 9), (4, 4), (4, 6), (5, 7),
         (6, 6), (3, 17), (6, 12), (7, 5), (8, 4), (8, 8)]


def all_points(d, r2):
    """Every point of S(d, r2) by brute force over the cube: int8 (count, d)."""
    m = math.isqrt(r2)
    grid = np.array(list(itertools.product(range(-m, m + 1), repeat=d)), dtype=np.int8)
    return grid[(grid.astype(np.int64) ** 2).sum(axis=1) == r2]


def spec_atoms(d, r2, top=None):
    """Non-increasing d-tuples of non-negative ints with squares summing to r2, sorted."""
    top = math.isqrt(r2) if top is None else top
    if d == 0:
        return [()] if r2 == 0 else []
    return sorted((v,) + rest for v in range(min(top, math.isqrt(r2)) + 1)
                  for rest in spec_atoms(d - 1, r2 - v * v, v))


def spec_codes(points):
    """Codes of the rows of points (all in one S(d, r2)), written directly from the
    lattice.py docstring with Python ints."""
    points = points.tolist()
    d = len(points[0])
    r2 = sum(v * v for v in points[0])

    def weight(a):
        w = math.factorial(d)
        for v in set(a):
            w //= math.factorial(a.count(v))
        return w << sum(1 for v in a if v)

    all_atoms = spec_atoms(d, r2)
    offsets = dict(zip(all_atoms, itertools.accumulate([0] + [weight(a) for a in all_atoms])))
    codes = []
    for z in points:
        absz = [abs(v) for v in z]
        free = list(range(d))
        rank = 0
        for u in sorted(set(absz), reverse=True):
            q = [i for i, p in enumerate(free) if absz[p] == u]
            rank = rank * math.comb(len(free), len(q)) + sum(math.comb(qi, t + 1) for t, qi in enumerate(q))
            free = [p for p in free if absz[p] != u]
        nonzero = [v for v in z if v]
        sign = sum(1 << i for i, v in enumerate(nonzero) if v < 0)
        codes.append(offsets[tuple(sorted(absz, reverse=True))] + (rank << len(nonzero)) + sign)
    return codes


def to_words(values, w):
    return np.array([[(v >> (64 * i)) & (2 ** 64 - 1) for i in range(w)] for v in values],
                    dtype=np.uint64)


def from_words(codes):
    codes = codes.reshape(codes.shape[0], -1)
    return [sum(int(c) << (64 * i) for i, c in enumerate(row)) for row in codes]


# ---------------------------------------------------------------- counts and parameters

@pytest.mark.parametrize("d, r2, expected, nbits", [
    (24, 79, 17_319_684_851_070_915_840, 64),
    (24, 10, 2_319_457_632, 32),
    (24, 3, 16_192, 14),
])
def test_known_counts(d, r2, expected, nbits):
    assert lattice.count(d, r2) == expected
    assert lattice.bits(d, r2) == nbits
    assert lattice.words(d, r2) == 1


@pytest.mark.parametrize("d, r2", [(32, 36), (40, 24)])
def test_paper_64_bit_settings_fit(d, r2):
    assert lattice.bits(d, r2) <= 64
    assert lattice.count(d, r2) > 2 ** 63


@pytest.mark.parametrize("d, r2", SMALL)
def test_count_matches_enumeration(d, r2):
    assert lattice.count(d, r2) == len(all_points(d, r2))


def test_count_of_empty_sphere_and_its_refusal():
    assert lattice.count(1, 2) == 0
    with pytest.raises(SpreadcodeError, match="empty"):
        lattice.bits(1, 2)


def test_params_for_the_paper_budgets():
    assert [lattice.params(b, 24) for b in (16, 32, 64)] == [3, 10, 79]


@pytest.mark.parametrize("nbits, d", [(16, 24), (64, 24), (64, 32), (128, 48), (128, 64), (40, 16)])
def test_params_is_the_largest_fitting_r2(nbits, d):
    r2 = lattice.params(nbits, d)
    assert all(lattice.count(d, s) <= 2 ** nbits for s in range(1, r2 + 1))
    assert lattice.count(d, r2 + 1) > 2 ** nbits


def test_good_params_fit_their_budget_and_work():
    assert (24, 79) in lattice.good_params(64)
    assert (24, 10) in lattice.good_params(32) and (24, 3) in lattice.good_params(16)
    assert {(48, 135), (64, 66)} <= set(lattice.good_params(128))
    for nbits in (16, 32, 64, 128, 256):
        for d, r2 in lattice.good_params(nbits):
            assert r2 == lattice.params(nbits, d)
            assert lattice.bits(d, r2) <= nbits
            assert len(lattice.atoms(d, r2)) <= lattice.GOOD_MAX_ATOMS


# ---------------------------------------------------------------- atoms

@pytest.mark.parametrize("d, r2", SMALL + [(24, 79)])
def test_atoms_are_the_sorted_absolute_points_in_lexicographic_order(d, r2):
    a = lattice.atoms(d, r2)
    assert a.dtype == np.int8 and a.shape[1] == d
    assert (np.diff(a.astype(int), axis=1) <= 0).all() and (a >= 0).all()
    assert ((a.astype(int) ** 2).sum(axis=1) == r2).all()
    rows = [tuple(r) for r in a.tolist()]
    assert rows == sorted(set(rows))
    if d <= 8:
        expected = {tuple(sorted(map(abs, p), reverse=True)) for p in all_points(d, r2).tolist()}
        assert set(rows) == expected


def test_atom_count_of_the_64_bit_setting():
    assert len(lattice.atoms(24, 79)) == 256


# ---------------------------------------------------------------- the code bijection

def test_worked_example_of_the_spec():
    assert lattice.encode(np.array([[0, -1, 1]], dtype=np.int8), 2).tolist() == [9]


@pytest.mark.parametrize("d, r2", SMALL)
def test_exhaustive_bijection_on_small_lattices(d, r2):
    points = all_points(d, r2)
    codes = lattice.encode(points, r2)
    assert codes.dtype == np.uint64 and codes.shape == (len(points),)
    assert sorted(codes.tolist()) == list(range(lattice.count(d, r2)))
    assert np.array_equal(lattice.decode(codes, d, r2), points)
    assert codes.tolist() == spec_codes(points)


def test_codes_follow_the_spec_on_random_points_of_large_lattices():
    rng = np.random.default_rng(0)
    for d, r2 in [(9, 14), (10, 9)]:
        z = lattice.nearest(rng.standard_normal((40, d)).astype(np.float32), r2)
        assert lattice.encode(z, r2).tolist() == spec_codes(z)


@pytest.mark.parametrize("d, r2", [(24, 79), (24, 10), (32, 36), (48, 135), (64, 66), (24, 3)])
def test_random_codes_round_trip(d, r2):
    rng = np.random.default_rng(d * 1000 + r2)
    n = lattice.count(d, r2)
    w = lattice.words(d, r2)
    values = [int(rng.integers(0, 2 ** 62)) * n // 2 ** 62 for _ in range(3000)] + [0, n - 1]
    codes = to_words(values, w).reshape(-1) if w == 1 else to_words(values, w)
    z = lattice.decode(codes, d, r2)
    assert z.dtype == np.int8 and z.shape == (len(values), d)
    assert ((z.astype(np.int64) ** 2).sum(axis=1) == r2).all()
    assert np.array_equal(lattice.encode(z, r2), codes)


@pytest.mark.parametrize("d, r2", [(24, 79), (48, 135), (64, 66)])
def test_random_points_round_trip(d, r2):
    rng = np.random.default_rng(1)
    z = lattice.nearest(rng.standard_normal((5000, d)).astype(np.float32), r2)
    codes = lattice.encode(z, r2)
    assert all(c < lattice.count(d, r2) for c in from_words(codes))
    assert np.array_equal(lattice.decode(codes, d, r2), z)


def test_multiword_codes_have_word_shape():
    assert lattice.words(48, 135) == 2 and lattice.bits(48, 135) == 128
    z = lattice.nearest(np.ones((3, 48), dtype=np.float32), 135)
    codes = lattice.encode(z, 135)
    assert codes.dtype == np.uint64 and codes.shape == (3, 2)
    top = lattice.decode(to_words([lattice.count(48, 135) - 1], 2), 48, 135)
    assert from_words(lattice.encode(top, 135)) == [lattice.count(48, 135) - 1]


# ---------------------------------------------------------------- nearest point

@pytest.mark.parametrize("d, r2", SMALL)
def test_nearest_maximises_the_inner_product(d, r2):
    rng = np.random.default_rng(d * 100 + r2)
    y = rng.standard_normal((400, d)).astype(np.float32)
    y[:50] *= 7.5                                       # rows need not be normalised
    points = all_points(d, r2)
    scores = y.astype(np.float64) @ points.T.astype(np.float64)
    z = lattice.nearest(y, r2)
    assert z.dtype == np.int8 and z.shape == y.shape
    assert ((z.astype(np.int64) ** 2).sum(axis=1) == r2).all()
    ours = (y.astype(np.float64) * z).sum(axis=1)
    best = scores.max(axis=1)
    np.testing.assert_allclose(ours, best, rtol=0, atol=1e-5 * np.abs(y).sum(axis=1).max())
    top2 = np.sort(scores, axis=1)[:, -2:] if len(points) > 1 else None
    if top2 is not None:
        clear = top2[:, 1] - top2[:, 0] > 1e-3
        assert np.array_equal(z[clear], points[scores.argmax(axis=1)][clear])


def test_nearest_of_a_lattice_direction_is_that_point():
    rng = np.random.default_rng(2)
    z = lattice.decode(rng.integers(0, lattice.count(24, 79), 500, dtype=np.uint64), 24, 79)
    assert np.array_equal(lattice.nearest(z.astype(np.float32), 79), z)


def test_nearest_of_zero_rows_is_a_lattice_point():
    z = lattice.nearest(np.zeros((2, 24), dtype=np.float32), 79)
    assert ((z.astype(int) ** 2).sum(axis=1) == 79).all()


@pytest.mark.parametrize("d, r2", [(12, 6), (6, 4), (8, 4), (5, 3), (12, 8), (3, 1)])
def test_nearest_candidates_are_the_two_nearest_points(d, r2):
    """The first two candidates have the sphere's two largest inner products (brute force
    over every point); the first is `nearest`'s point; every candidate is on the sphere,
    distinct, and no nearer than the one before."""
    rng = np.random.default_rng(d * 10 + r2)
    y = rng.standard_normal((500, d)).astype(np.float32)
    y[:40] *= 0.01                                      # rows need not be normalised
    points = lattice.decode(np.arange(lattice.count(d, r2), dtype=np.uint64), d, r2)
    best = -np.sort(-(y.astype(np.float64) @ points.T.astype(np.float64)), axis=1)
    z = lattice.nearest_candidates(y, r2, 4)
    count = min(4, len(lattice._candidate_templates(d, r2)))
    assert z.dtype == np.int8 and z.shape == (500, count, d)
    assert ((z.astype(np.int64) ** 2).sum(axis=2) == r2).all()
    scores = np.einsum("nd,ncd->nc", y.astype(np.float64), z.astype(np.float64))
    top = min(2, count)
    np.testing.assert_allclose(scores[:, :top], best[:, :top], rtol=0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-9).all()
    codes = lattice.encode(np.ascontiguousarray(z.reshape(-1, d)), r2).reshape(500, count)
    assert all(len(set(row)) == count for row in codes.tolist())
    clear = best[:, 0] - best[:, 1] > 1e-3
    assert np.array_equal(z[clear, 0], lattice.nearest(y, r2)[clear])


def test_nearest_candidates_refuse_bad_counts():
    y = np.ones((2, 12), dtype=np.float32)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SpreadcodeError, match="count must be a positive integer"):
            lattice.nearest_candidates(y, 6, bad)
    assert lattice.nearest_candidates(np.empty((0, 12), dtype=np.float32), 6, 2).shape == (0, 2, 12)


def test_quantize_is_encode_of_nearest():
    rng = np.random.default_rng(3)
    for d, r2 in [(24, 79), (48, 135), (8, 8)]:
        y = rng.standard_normal((700, d)).astype(np.float32)
        assert np.array_equal(lattice.quantize(y, r2), lattice.encode(lattice.nearest(y, r2), r2))


def test_results_do_not_depend_on_threads():
    rng = np.random.default_rng(4)
    y = rng.standard_normal((3000, 24)).astype(np.float32)
    codes = lattice.quantize(y, 79, threads=1)
    assert np.array_equal(lattice.quantize(y, 79, threads=2), codes)
    assert np.array_equal(lattice.decode(codes, 24, 79, threads=1), lattice.decode(codes, 24, 79, threads=2))


# ---------------------------------------------------------------- empty inputs and errors

def test_empty_inputs():
    assert lattice.nearest(np.zeros((0, 24), np.float32), 79).shape == (0, 24)
    assert lattice.quantize(np.zeros((0, 24), np.float32), 79).shape == (0,)
    assert lattice.encode(np.zeros((0, 48), np.int8), 135).shape == (0, 2)
    assert lattice.decode(np.zeros(0, np.uint64), 24, 79).shape == (0, 24)
    distances, ids = lattice.search(np.zeros(0, np.uint64), 24, 79, np.ones((2, 24), np.float32), 3)
    assert np.array_equal(ids, -np.ones((2, 3))) and np.isinf(distances).all()
    distances, ids = lattice.search(np.zeros(5, np.uint64), 24, 79, np.zeros((0, 24), np.float32), 3)
    assert distances.shape == ids.shape == (0, 3)
    lims, ids, distances = lattice.range_search(np.zeros(0, np.uint64), 24, 79, np.ones((2, 24), np.float32), 1.0)
    assert lims.tolist() == [0, 0, 0] and ids.shape == distances.shape == (0,)


@pytest.mark.parametrize("call, message", [
    (lambda: lattice.nearest(np.ones((2, 24)), 79), "float32"),
    (lambda: lattice.nearest(np.ones(24, np.float32), 79), "shape"),
    (lambda: lattice.nearest(np.ones((24, 4), np.float32).T, 79), "C-contiguous"),
    (lambda: lattice.nearest(np.full((1, 24), np.nan, np.float32), 79), "NaN"),
    (lambda: lattice.nearest(np.ones((1, 24), np.float32), 16384), "int8"),
    (lambda: lattice.nearest(np.ones((1, 65), np.float32), 3), "limit"),
    (lambda: lattice.nearest(np.ones((1, 32), np.float32), 701), "atoms"),
    (lambda: lattice.nearest(np.ones((1, 24), np.float32), 0), "r2"),
    (lambda: lattice.nearest(np.ones((1, 24), np.float32), 2.5), "integer"),
    (lambda: lattice.encode(np.ones((1, 24), np.int16), 24), "int8"),
    (lambda: lattice.encode(np.ones((2, 24), np.int8), 23), "row 0"),
    (lambda: lattice.encode(np.full((1, 24), -128, np.int8), 79), "row 0"),
    (lambda: lattice.decode(np.array([lattice.count(24, 79)], np.uint64), 24, 79), "row 0"),
    (lambda: lattice.decode(np.zeros(3, np.int64), 24, 79), "uint64"),
    (lambda: lattice.decode(np.zeros(3, np.uint64), 48, 135), r"\(n, 2\)"),
    (lambda: lattice.decode(np.zeros((3, 2), np.uint64), 24, 79), r"\(n,\)"),
    (lambda: lattice.search(np.zeros(3, np.uint64), 24, 79, np.ones((1, 23), np.float32), 2), "24 columns"),
    (lambda: lattice.search(np.zeros(3, np.uint64), 24, 79, np.ones((1, 24), np.float32), 0), "k"),
    (lambda: lattice.range_search(np.zeros(3, np.uint64), 24, 79, np.ones((1, 24), np.float32), "x"), "radius"),
    (lambda: lattice.params(300, 24), "limit"),
    (lambda: lattice.params(2, 24), "fits"),
    (lambda: lattice.count(0, 3), "d"),
])
def test_bad_input_is_refused_clearly(call, message):
    with pytest.raises(SpreadcodeError, match=message):
        call()


# ---------------------------------------------------------------- scans

def dyadic_queries(rng, nq, d):
    """Queries whose inner products with integer points are exact in float32."""
    return (rng.integers(-8, 9, (nq, d)) / 8).astype(np.float32)


def reference_distances(codes, d, r2, queries):
    z = lattice.decode(codes, d, r2).astype(np.float32)
    return np.float32(2) - (queries @ z.T) * np.float32(2 / math.sqrt(r2))


def reference_topk(dist, k):
    n = dist.shape[1]
    order = np.lexsort((np.broadcast_to(np.arange(n), dist.shape), dist), axis=1)[:, :k]
    out_d = np.full((dist.shape[0], k), np.inf, np.float32)
    out_i = np.full((dist.shape[0], k), -1, np.int64)
    out_d[:, :order.shape[1]] = np.take_along_axis(dist, order, axis=1)
    out_i[:, :order.shape[1]] = order
    return out_d, out_i


@pytest.mark.parametrize("n, k, threads", [(10000, 10, 2), (10000, 7, 1), (3000, 50, 2), (5, 8, 2), (1, 1, 1)])
def test_search_equals_brute_force(n, k, threads):
    d, r2 = 8, 4                                       # r = 2: distances exact in float32
    rng = np.random.default_rng(n + k)
    pool = lattice.encode(all_points(d, r2), r2)
    codes = pool[rng.integers(0, len(pool), n)]        # duplicates make ties
    queries = dyadic_queries(rng, 37, d)
    distances, ids = lattice.search(codes, d, r2, queries, k, threads=threads)
    ref_d, ref_i = reference_topk(reference_distances(codes, d, r2, queries), k)
    assert distances.dtype == np.float32 and ids.dtype == np.int64
    assert np.array_equal(ids, ref_i)
    assert np.array_equal(distances, ref_d)


def test_search_in_small_query_batches_gives_the_same_results(monkeypatch):
    from spreadcode import _codec
    rng = np.random.default_rng(6)
    codes = lattice.quantize(rng.standard_normal((3000, 24)).astype(np.float32), 79)
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    expected = lattice.search(codes, 24, 79, queries, 7, threads=2)
    monkeypatch.setattr(_codec, "TOPK_HEAP_ENTRIES", 40)          # batches of 2 queries
    for got, want in zip(lattice.search(codes, 24, 79, queries, 7, threads=2), expected):
        assert np.array_equal(got, want)


def test_search_multiword_codes():
    d, r2 = 48, 135
    rng = np.random.default_rng(5)
    codes = lattice.quantize(rng.standard_normal((2000, d)).astype(np.float32), r2)
    queries = rng.standard_normal((20, d)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    distances, ids = lattice.search(codes, d, r2, queries, 5)
    dist = reference_distances(codes, d, r2, queries)
    np.testing.assert_allclose(distances, np.take_along_axis(dist, ids, axis=1), atol=1e-5)
    np.testing.assert_allclose(distances, np.sort(dist, axis=1)[:, :5], atol=1e-5)


@pytest.mark.parametrize("n, threads", [(10000, 2), (700, 1)])
def test_range_search_equals_brute_force(n, threads):
    d, r2 = 8, 4
    rng = np.random.default_rng(n)
    pool = lattice.encode(all_points(d, r2), r2)
    codes = pool[rng.integers(0, len(pool), n)]
    queries = dyadic_queries(rng, 23, d)
    lims, ids, distances = lattice.range_search(codes, d, r2, queries, 1.5, threads=threads)
    dist = reference_distances(codes, d, r2, queries)
    assert lims.dtype == np.int64 and lims.shape == (24,)
    for q in range(len(queries)):
        hit = np.nonzero(dist[q] <= 1.5)[0]
        order = hit[np.lexsort((hit, dist[q, hit]))]
        assert np.array_equal(ids[lims[q]:lims[q + 1]], order)
        assert np.array_equal(distances[lims[q]:lims[q + 1]], dist[q, order])
