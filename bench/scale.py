"""Collections of N vectors: encode and search throughput and peak memory, in one process and
on Dask workers, next to faiss IndexPQ and IndexLattice at the same 64 bits per vector.

Run:  python bench/scale.py --model MODEL -n 1000000 -n 10000000 [--workers 2]

* Vectors: the rows of DATA/base.npy (pypi-minilm96: 75,000 x 96 float16), repeated; every
  copy after the first is perturbed by seeded Gaussian noise of relative norm --noise and
  re-normalised. They are generated on the fly, block by block (a vector depends only on
  its row), and never written except as the collection's shards in a temporary directory,
  so memory does not grow with N. Queries: the first rows of DATA/learn.npy.
* encode: vectors/s and peak RSS of writing the collection (shards of --shard-size, then
  the manifest) in one process, and with a LocalCluster of --workers worker processes (one
  thread each; peak RSS of the client and of the largest worker). Both go through
  `spreadcode.encode.write_shard` (`spreadcode.distributed.write_shards` on Dask), reading
  the generated rows; the two collections must have the same manifest (same shard payload
  hashes). The time includes generating the vectors (the "generate" row measures that alone).
* search: queries/s and peak RSS of `Index.load(...).search` for each --queries count and
  each --k, in one process and on the Dask workers (the collection verified first, untimed),
  after a first search of 10 queries at k = 10, whose seconds are a row of their own: in one
  process it also decodes the codes once for the searches after it. Then a second pass of
  the same searches with other queries (the learn rows after the largest --queries count):
  the index keeps the candidates its re-ranking decoded (`Collection.decoded_at`), so the
  second pass shows a long-running index's rate. What an index keeps decoded is bounded by
  --decode-memory (`Index.decode_memory`; default 1 GiB in one process and per worker: 10.7M
  codes of 96 dimensions for the shortlist scan, as int8 rows, and 2.8M re-ranked candidates).
* Dask's overhead and faiss IndexPQ, interleaved: one child process holds an index searching
  in-process, one searching on a LocalCluster of --workers and (unless --no-faiss) a faiss
  IndexPQ of the same vectors, all warmed by a search of 1,000 queries at the largest k;
  then --rounds rounds of new queries per (queries, k), each searched by all three, the
  order reversed every other round. The median q/s of each, and the ratios of the medians:
  the passes above compare single searches in separate processes, cold starts and the
  host's drift included (± 20 % from search to search at 1,000 queries).
* faiss: IndexPQ(96, 8, 8) and IndexLattice(96, 2, 6, 5) (2 x (26 lattice + 6 scale) bits;
  both 8 bytes per vector), trained on 50,000 learn vectors, the same N vectors added block
  by block; their codes live in RAM (8 B/vector). IndexLattice scans by decoding every
  code for every query (about a microsecond per pair), so its search is timed on at most
  --lattice-pairs / N queries; the table says how many.

Every measurement runs in a fresh child process, so that its peak RSS (VmHWM) is its own;
each raises its glibc malloc thresholds first, as the CLI does (`spreadcode.malloc`).
Prints a markdown table and appends one JSON object per row to bench/results/scale.jsonl.
The model (--model: a path or a store hash) is trained beforehand, e.g.
``spreadcode train learn.npy --bits 64``.
"""
import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "pypi-minilm96"
RESULTS = ROOT / "bench" / "results" / "scale.jsonl"
GENERATE_BLOCK = 65536  # rows generated together (one seed per block)
FAISS_TRAIN = 50_000
FIRST_QUERIES = 10             # queries of the first search, timed on its own (seconds)
WARM_QUERIES = 1000           # the interleaved step's first search, at the largest k
FAISS_PQ = (8, 8)              # IndexPQ(d, M, nbits): 64 bits
FAISS_LATTICE = (2, 6, 5)      # IndexLattice(d, nsq, scale_nbit, r2): 2 x (26 + 6) = 64 bits
FAISS_LABELS = {"pq": "faiss IndexPQ(96, {}, {})".format(*FAISS_PQ),
                "lattice": "faiss IndexLattice(96, {}, {}, {})".format(*FAISS_LATTICE)}

from spreadcode.vecio import VectorFile  # noqa: E402 (after the sys.path line)


class GeneratedVectors(VectorFile):
    """N vectors float32 (N, d): row i is base[i % len(base)], plus (i >= len(base)) seeded
    Gaussian noise of relative norm ``noise``, re-normalised; rows are generated
    `GENERATE_BLOCK` at a time, each block from its own seed, so a row does not depend on
    how it is read. ``path`` is the base .npy file (named in the shards' metadata)."""

    def __init__(self, path, n, noise, seed=0):
        self._base = np.load(path, mmap_mode="r")
        self._noise, self._seed = noise, seed
        self._cached = (None, None)
        super().__init__(path, n, self._base.shape[1], np.float32)

    def _block(self, number):
        """Rows of generated block ``number``, float32 (<= GENERATE_BLOCK, d)."""
        if self._cached[0] != number:
            start = number * GENERATE_BLOCK
            rows = np.arange(start, min(start + GENERATE_BLOCK, self.n))
            x = np.asarray(self._base[rows % len(self._base)], dtype=np.float32)
            copy = rows >= len(self._base)
            if copy.any():
                rng = np.random.default_rng((self._seed, number))
                x[copy] += rng.standard_normal((int(copy.sum()), self.d), dtype=np.float32) \
                    * np.float32(self._noise / np.sqrt(self.d))
                x[copy] /= np.linalg.norm(x[copy], axis=1, keepdims=True)
            self._cached = (number, x)
        return self._cached[1]

    def _rows(self, start, stop):
        parts = [self._block(number)[max(start - number * GENERATE_BLOCK, 0):
                                     stop - number * GENERATE_BLOCK]
                 for number in range(start // GENERATE_BLOCK, -(-stop // GENERATE_BLOCK))]
        return np.concatenate(parts) if parts else np.zeros((0, self.d), np.float32)


def write_generated(task, catalyzer, meta, batch, n, noise):
    """`spreadcode.encode.write_shard` of ``task`` reading the generated vectors."""
    from spreadcode.encode import write_shard

    return write_shard(task, catalyzer, meta, batch,
                       vectors=GeneratedVectors(task.input, n, noise))


def peak_rss_mib():
    """Peak resident set size of this process, MiB (VmHWM of /proc/self/status)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise SystemExit("peak RSS needs /proc/self/status (Linux)")


def step(name, **kwargs):
    """Run one measurement in a child process (fresh peak RSS); returns its JSON result."""
    out = subprocess.run([sys.executable, __file__, "--step", name, "--args",
                          json.dumps(kwargs)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"step {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_step(name, args):
    """The child-process side of `step`: do the work, print one JSON line."""
    # Imported before any clock starts (it takes seconds), after the spreadcode package has set
    # its OpenMP wait policy (`spreadcode.openmp`), as in the CLI.
    import torch  # noqa: F401

    from spreadcode import distributed, malloc

    malloc.raise_thresholds()  # as the CLI does for its process
    workers = args.get("workers")
    with distributed.open_client(workers=workers) as client:
        if client is not None:
            client.run(lambda: __import__("torch"))  # workers import torch untimed too
        result = STEPS[name](args, client)
        result["peak_rss_mib"] = peak_rss_mib()
        if client is not None:
            result["worker_peak_rss_mib"] = max(client.run(peak_rss_mib).values())
    print(json.dumps(result))


def generate_step(args, client):
    """Generating the N vectors alone (the share of the encode time that is not encoding)."""
    vectors = GeneratedVectors(args["base"], args["n"], args["noise"])
    started = time.perf_counter()
    for _ in vectors.chunks(GENERATE_BLOCK):
        pass
    return {"seconds": time.perf_counter() - started, "n": args["n"]}


def encode_step(args, client):
    """Write the collection of N generated vectors into args["out"]."""
    from spreadcode import collection_dir, encode
    from spreadcode.catalyzer import load_catalyzer
    from spreadcode.distributed import write_shards

    catalyzer, meta = load_catalyzer(args["model"], store=args["store"])
    out = Path(args["out"])
    out.mkdir()
    manifest = collection_dir.Manifest(meta.sha256, meta.quantizer, meta.d_in,
                                       args["shard_size"])
    source = GeneratedVectors(args["base"], args["n"], args["noise"])
    tasks = encode.plan_shards(out, manifest, [source], args["shard_size"])
    write = functools.partial(write_generated, n=args["n"], noise=args["noise"])
    started = time.perf_counter()
    if client is None:
        entries = [write(task, catalyzer, meta, 65536) for task in tasks]
    else:
        entries = write_shards(client, tasks, write, meta)
    collection_dir.write_manifest(out, collection_dir.with_shards(manifest, entries))
    return {"seconds": time.perf_counter() - started, "n": args["n"],
            "shards": len(tasks)}


def search_step(args, client):
    """Search the collection for each (queries, k)."""
    from spreadcode import Index

    index = Index.load(args["db"], model=args["model"], store=args["store"], client=client,
                       decode_memory=args["decode_memory"])
    learn = np.load(args["learn"], mmap_mode="r")
    # The first search also decodes the codes once in this process (kept for the next ones).
    started = time.perf_counter()
    index.search(np.asarray(learn[:FIRST_QUERIES], dtype=np.float32), 10)
    first_seconds = time.perf_counter() - started
    timings, again = {}, {}
    fresh = max(args["queries"])
    for timed, first_row in ((timings, 0), (again, fresh)):
        for nq in args["queries"]:
            queries = np.asarray(learn[first_row:first_row + nq], dtype=np.float32)
            for k in args["ks"]:
                started = time.perf_counter()
                index.search(queries, k)
                timed[f"{nq},{k}"] = time.perf_counter() - started
    return {"timings": timings, "again": again, "first_seconds": first_seconds}


def interleaved_step(args, client):
    """Dask's overhead per search, and spreadcode against faiss IndexPQ, without the cold
    starts and the host's drift that the separate passes of `search_step` and `faiss_step`
    carry: one index searching in this process and one on ``client``'s workers (and, with
    ``args["faiss"]``, an IndexPQ of the same vectors), all warmed by a first search (which
    builds g_0's table in each), then for each (queries, k) ``rounds`` rounds of new
    queries, each searched by every index, the order reversed every other round. Returns
    each search's seconds."""
    from spreadcode import Index

    indexes = {name: Index.load(args["db"], model=args["model"], store=args["store"],
                                client=where, decode_memory=args["decode_memory"])
               for name, where in (("one", None), ("dask", client))}
    if args["faiss"]:
        indexes["pq"] = faiss_index(args, "pq")[0]
    learn = np.load(args["learn"], mmap_mode="r")
    row = WARM_QUERIES
    for index in indexes.values():
        index.search(np.asarray(learn[:row], dtype=np.float32), max(args["ks"]))
    seconds = {name: {} for name in indexes}
    for nq in args["queries"]:
        for k in args["ks"]:
            for number in range(args["rounds"]):
                queries = np.asarray(learn[row:row + nq], dtype=np.float32)
                row += nq
                for name in sorted(indexes, reverse=bool(number % 2)):
                    started = time.perf_counter()
                    indexes[name].search(queries, k)
                    seconds[name].setdefault(f"{nq},{k}", []).append(
                        time.perf_counter() - started)
    return {"seconds": seconds}


def faiss_index(args, kind):
    """A faiss index of ``kind`` ("pq": IndexPQ, "lattice": IndexLattice) trained on the last
    learn rows, the N generated vectors added block by block: (index, seconds adding)."""
    import faiss

    learn = np.load(args["learn"], mmap_mode="r")
    d = learn.shape[1]
    index = (faiss.IndexPQ(d, *FAISS_PQ) if kind == "pq"
             else faiss.IndexLattice(d, *FAISS_LATTICE))
    assert index.sa_code_size() == 8, index.sa_code_size()
    index.train(np.asarray(learn[-FAISS_TRAIN:], dtype=np.float32))
    vectors = GeneratedVectors(args["base"], args["n"], args["noise"])
    started = time.perf_counter()
    for block in vectors.chunks(GENERATE_BLOCK):
        index.add(block)
    return index, time.perf_counter() - started


def faiss_step(args, client):
    """Train a faiss index, add the N generated vectors block by block, search."""
    index, encode_seconds = faiss_index(args, args["kind"])
    learn = np.load(args["learn"], mmap_mode="r")
    timings, searched = {}, {}
    for nq in args["queries"]:
        limit = nq if args["kind"] == "pq" else \
            max(1, min(nq, args["lattice_pairs"] // args["n"]))
        queries = np.asarray(learn[:limit], dtype=np.float32)
        for k in args["ks"]:
            started = time.perf_counter()
            index.search(queries, k)
            timings[f"{nq},{k}"] = time.perf_counter() - started
            searched[f"{nq},{k}"] = limit
    return {"seconds": encode_seconds, "n": args["n"], "timings": timings,
            "searched": searched}


STEPS = {"generate": generate_step, "encode": encode_step, "search": search_step,
         "interleaved": interleaved_step, "faiss": faiss_step}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, action="append",
                        help="collection size (repeat for several)")
    parser.add_argument("--model", help="catalyzer: path or store hash")
    parser.add_argument("--store", default=None, help="model store of --model")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="directory of base.npy and learn.npy")
    parser.add_argument("--shard-size", type=int, default=100_000,
                        help="vectors per shard; one Dask task per shard (default 100,000: a "
                        "shard as big as the collection leaves all but one worker idle)")
    parser.add_argument("--workers", type=int, default=2,
                        help="Dask LocalCluster worker processes, one thread each (default 2)")
    parser.add_argument("--queries", type=int, nargs="+", default=[1000, 10_000],
                        help="query counts to time (default 1000 10000)")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100],
                        help="result counts to time (default 10 100)")
    parser.add_argument("--decode-memory", type=int, default=None, metavar="BYTES",
                        help="Index.decode_memory of the searches: decoded codes kept per "
                             "process [default: the index's default]")
    parser.add_argument("--noise", type=float, default=0.05,
                        help="relative norm of the perturbation of repeated rows")
    parser.add_argument("--lattice-pairs", type=int, default=200_000_000,
                        help="faiss IndexLattice search: at most this many (query, code) pairs")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved one-process / Dask searches: rounds of new queries "
                             "per (queries, k), 0 to skip them (default 3)")
    parser.add_argument("--no-faiss", action="store_true",
                        help="skip the faiss IndexPQ and IndexLattice rows")
    parser.add_argument("--tmp", default=None, help="directory for the temporary collections")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.step:
        return run_step(opts.step, json.loads(opts.args))
    if not opts.n or not opts.model:
        parser.error("give -n N (one or more) and --model")

    data = Path(opts.data)
    learn_rows = len(np.load(data / "learn.npy", mmap_mode="r"))
    if 2 * max(opts.queries) > learn_rows:
        parser.error(f"the second pass of searches takes its queries after the first's: "
                     f"--queries needs 2 x {max(opts.queries)} learn rows, {data} has "
                     f"{learn_rows}")
    interleaved_rows = WARM_QUERIES + opts.rounds * len(opts.k) * sum(opts.queries)
    if interleaved_rows > learn_rows:
        parser.error(f"--rounds {opts.rounds} of --queries {opts.queries} at {len(opts.k)} "
                     f"k need {interleaved_rows} learn rows, {data} has {learn_rows}")
    common = {"base": str(data / "base.npy"), "learn": str(data / "learn.npy"),
              "noise": opts.noise, "queries": opts.queries, "ks": opts.k}
    model = {"model": opts.model, "store": opts.store}
    rows = []

    def add(method, n, what, workers, rate, unit, result, nq=None, k=None, **extra):
        rows.append({"method": method, "n": n, "step": what, "workers": workers, "nq": nq,
                     "k": k, "rate": rate, "unit": unit,
                     "peak_rss_mib": round(result["peak_rss_mib"], 1),
                     "worker_peak_rss_mib": result.get("worker_peak_rss_mib"), **extra})

    for n in opts.n:
        with tempfile.TemporaryDirectory(dir=opts.tmp, prefix="spreadcode-scale-") as tmp:
            generated = step("generate", n=n, **common)
            add("generate vectors", n, "generate", None, n / generated["seconds"], "vec/s",
                generated)
            dirs = {}
            for workers in (None, opts.workers):
                dirs[workers] = str(Path(tmp) / f"coll-{workers or 1}")
                encoded = step("encode", n=n, out=dirs[workers], shard_size=opts.shard_size,
                               workers=workers, **common, **model)
                add("spreadcode", n, "encode", workers, n / encoded["seconds"], "vec/s",
                    encoded, shards=encoded["shards"], shard_size=opts.shard_size)
            manifests = [(Path(path) / "manifest.json").read_bytes() for path in dirs.values()]
            if manifests[0] != manifests[1]:
                raise SystemExit("the Dask collection differs from the single-process one")
            for workers in (None, opts.workers):
                searched = step("search", db=dirs[None], workers=workers,
                                decode_memory=opts.decode_memory, **common, **model)
                add("spreadcode, first search", n, "search", workers,
                    searched["first_seconds"], "s", searched, nq=FIRST_QUERIES, k=10)
                for label, timed in (("spreadcode", "timings"),
                                     ("spreadcode, second pass (other queries)", "again")):
                    for key, seconds in searched[timed].items():
                        nq, k = map(int, key.split(","))
                        add(label, n, "search", workers, nq / seconds, "q/s", searched,
                            nq=nq, k=k)
            if opts.rounds:
                result = step("interleaved", db=dirs[None], workers=opts.workers,
                              rounds=opts.rounds, decode_memory=opts.decode_memory,
                              faiss=not opts.no_faiss, n=n, **common, **model)
                label = f"interleaved (median of {opts.rounds}"
                for key, one in result["seconds"]["one"].items():
                    nq, k = map(int, key.split(","))
                    dask, pq = (result["seconds"].get(name, {}).get(key) for name in ("dask", "pq"))
                    overhead = float(np.median(dask) / np.median(one) - 1)
                    versus = {} if pq is None else {
                        "x_indexpq": float(np.median(pq) / np.median(one))}
                    against = "" if pq is None else f", {versus['x_indexpq']:.2f}x IndexPQ"
                    for times, workers, note in ((one, None, against),
                                                 (dask, opts.workers, f", {overhead:+.0%}")):
                        add(f"spreadcode, {label}{note})", n, "search", workers,
                            nq / float(np.median(times)), "q/s", result, nq=nq, k=k,
                            seconds=times, dask_overhead=overhead, **versus)
                    if pq is not None:
                        add(f"{FAISS_LABELS['pq']}, {label})", n,
                            "search", None, nq / float(np.median(pq)), "q/s", result, nq=nq,
                            k=k, seconds=pq)
            for kind, label in ([] if opts.no_faiss else FAISS_LABELS.items()):
                result = step("faiss", n=n, kind=kind, lattice_pairs=opts.lattice_pairs,
                              **common)
                add(label, n, "encode", None, n / result["seconds"], "vec/s", result)
                for key, seconds in result["timings"].items():
                    nq, k = map(int, key.split(","))
                    timed = result["searched"][key]
                    add(label, n, "search", None, timed / seconds, "q/s", result, nq=nq, k=k,
                        timed_queries=timed)
    print_table(rows)
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
             "cpus": os.cpu_count(), "model": opts.model, "noise": opts.noise,
             "decode_memory": opts.decode_memory}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        for row in rows:
            fh.write(json.dumps({**stamp, **row}) + "\n")
    print(f"\nappended {len(rows)} rows to {RESULTS}")


def print_table(rows):
    """The rows as a markdown table."""
    print("| method | N | step | Dask workers | queries | k | rate | peak RSS MiB | "
          "worker peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        queries = row["nq"]
        if row.get("timed_queries") not in (None, row["nq"]):
            queries = f"{row['nq']} ({row['timed_queries']} timed)"
        worker = row["worker_peak_rss_mib"]
        print(f"| {row['method']} | {row['n']:,} | {row['step']} | {row['workers'] or ''} | "
              f"{queries or ''} | {row['k'] or ''} | "
              f"{row['rate']:,.{2 if row['unit'] == 's' else 0}f} {row['unit']} | "
              f"{row['peak_rss_mib']:,.0f} | {'' if worker is None else f'{worker:,.0f}'} |")


if __name__ == "__main__":
    main()
