"""Codec throughput: spreadcode's lattice quantizer against faiss's ZnSphereCodec.

Prints two tables:
1. vectors/s for nearest point + encode (spreadcode.lattice.quantize, fused) and for
   decode, on n random unit vectors at (d, r2) = (24, 79), with 1 and 2 threads, next to
   faiss.ZnSphereCodec(d, r2) on the same vectors, called through its batched
   encode_multi / decode_multi (OpenMP threads set with faiss.omp_set_num_threads), and
   the speed ratio. The four timings alternate within each repetition; best kept. faiss is an optional benchmark-only dependency (the `bench` extra);
   without it the faiss columns are left empty.
2. the lattice scan: distances/s of lattice.search for nq unit queries against n codes.

Usage: python bench/codec.py [--n 1000000] [--nq 5000] [--k 10] [--repeat 3]
"""
import argparse
import math
import os
import time

import numpy as np

from spreadcode import lattice

try:
    import faiss
except ImportError:
    faiss = None


def unit_vectors(n, d, seed):
    """float32 (n, d) rows uniform on the unit sphere."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def best_seconds(fns, repeat):
    """Fastest wall time of each function over `repeat` rounds; the functions take turns
    within a round so that a change in machine load hits all of them alike."""
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def codec_rows(x, d, r2, threads_list, repeat):
    """Table rows (operation, threads, spreadcode vectors/s, faiss vectors/s or None)."""
    n = len(x)
    codes = lattice.quantize(x, r2)
    codec = faiss.ZnSphereCodec(d, r2) if faiss else None
    faiss_codes = np.empty(n, dtype=np.uint64)
    faiss_out = np.empty_like(x)
    rows = []
    for threads in threads_list:
        fns = [lambda: lattice.quantize(x, r2, threads=threads),
               lambda: lattice.decode(codes, d, r2, threads=threads)]
        if codec is not None:
            faiss.omp_set_num_threads(threads)
            fns += [lambda: codec.encode_multi(n, faiss.swig_ptr(x), faiss.swig_ptr(faiss_codes)),
                    lambda: codec.decode_multi(n, faiss.swig_ptr(faiss_codes), faiss.swig_ptr(faiss_out))]
        rates = [n / t for t in best_seconds(fns, repeat)] + [None, None]
        rows.append(("nearest + encode", threads, rates[0], rates[2]))
        rows.append(("decode", threads, rates[1], rates[3]))
    return rows


def print_codec_table(rows, n, d, r2):
    print(f"\nLattice codec, S(d={d}, r2={r2}), {n:,} random unit vectors "
          f"(faiss: ZnSphereCodec.encode_multi / decode_multi)")
    print(f"{'operation':<18} {'threads':>7} {'spreadcode vec/s':>17} {'faiss vec/s':>13} {'ratio':>7}")
    for op, threads, ours, theirs in rows:
        theirs_s = f"{theirs:13,.0f}" if theirs else f"{'-':>13}"
        ratio = f"{ours / theirs:6.2f}x" if theirs else f"{'-':>7}"
        print(f"{op:<18} {threads:>7} {ours:17,.0f} {theirs_s} {ratio}")


def scan_rows(n, nq, d, r2, k, threads_list):
    """Table rows (threads, seconds, distances/s) of lattice.search."""
    codes = lattice.quantize(unit_vectors(n, d, 1), r2)
    queries = unit_vectors(nq, d, 2)
    rows = []
    for threads in threads_list:
        seconds, = best_seconds([lambda: lattice.search(codes, d, r2, queries, k, threads=threads)], 1)
        rows.append((threads, seconds, n * nq / seconds))
    return rows


def print_scan_table(rows, n, nq, d, r2, k):
    print(f"\nLattice scan (lattice.search, top-{k}), {nq:,} queries x {n:,} codes, S(d={d}, r2={r2})")
    print(f"{'threads':>7} {'seconds':>9} {'distances/s':>15}")
    for threads, seconds, rate in rows:
        print(f"{threads:>7} {seconds:9.2f} {rate:15,.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors / codes")
    parser.add_argument("--nq", type=int, default=5000, help="queries of the scan")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query in the scan")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best kept)")
    parser.add_argument("--skip-scan", action="store_true", help="codec table only")
    args = parser.parse_args()
    d, r2, threads_list = 24, 79, (1, 2)
    print(f"load average before the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(timings are wall clock, best of --repeat)")
    x = unit_vectors(args.n, d, 0)
    print_codec_table(codec_rows(x, d, r2, threads_list, args.repeat), args.n, d, r2)
    if not args.skip_scan:
        print_scan_table(scan_rows(args.n, args.nq, d, r2, args.k, threads_list), args.n, args.nq, d, r2, args.k)


if __name__ == "__main__":
    main()
