"""Throughput and memory of `spreadcode encode` / `spreadcode search`, next to faiss IndexPQ.

Run:  python bench/encode_search.py [DATASET_DIR] [--model HASH|PATH] [--big 10]

* encode: vectors/s of encode_file (catalyzer forward + lattice quantization + .spc write) on
  base.fvecs, and of faiss IndexPQ(M=8, 8 bits: the same 8 bytes per vector) add();
* search: queries/s for all queries at k=100, spreadcode asymmetric lattice scan vs
  IndexPQ's ADC scan, with 1-recall@1/10/100;
* peak RSS of each step, measured in a fresh child process so steps do not mask each other;
* a synthetic file --big times larger than base (random unit vectors, written once to a temp
  dir) encoded with the default batch: peak RSS must stay flat (bounded by the batch).

The catalyzer comes from --model, or is trained with the library defaults on learn.fvecs and
cached under bench/cache/ by the hash of the learn file.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wordnet-minilm96"


def peak_rss_mib():
    """Peak resident set size of this process, MiB: VmHWM of /proc/self/status (Linux), the
    high-water mark of this process image only. getrusage's ru_maxrss would not do: Linux
    carries it across fork + exec, so a child would report the parent's peak when larger."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise SystemExit("peak RSS needs /proc/self/status (Linux)")


def cached_catalyzer(learn_path, store):
    """Hash of a default 64-bit catalyzer trained on ``learn_path`` (trained once, cached)."""
    from spreadcode import store as model_store
    from spreadcode.commands import train_command

    key = model_store.sha256_file(learn_path)[:16]
    marker = Path(store) / f"bench-encode-search-{key}.json"
    if marker.is_file():
        return json.loads(marker.read_text())["sha256"]
    summary = train_command(learn_path, bits=64, store=store, progress=True)
    marker.write_text(json.dumps({"sha256": summary.sha256}))
    return summary.sha256


def step(name, **kwargs):
    """Run one measurement in a child process (fresh peak RSS); returns its JSON result."""
    out = subprocess.run(
        [sys.executable, __file__, "--step", name, "--args", json.dumps(kwargs)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_step(name, args):
    """The child-process side of `step`: do the work, print one JSON line."""
    from spreadcode import vecio
    if name in ("encode", "search"):  # imported before the clock starts: torch takes seconds
        from spreadcode.encode import encode_file
        from spreadcode.index import Index
        from spreadcode.search import recall_at

    started = time.perf_counter()
    if name == "encode":
        summary = encode_file(args["input"], args["output"], model=args["model"],
                              store=args["store"])
        result = {"n": summary.count, "code": f"{summary.quantizer}, {summary.bits} bits"}
    elif name == "search":
        index = Index.load(args["db"], model=args["model"], store=args["store"])
        _, ids = index.search(vecio.read_vectors(args["query"]), k=100)
        elapsed = time.perf_counter() - started
        result = {"n": len(ids), "seconds": elapsed,
                  "recall": recall_at(ids, vecio.read_groundtruth(args["gt"]))}
    elif name in ("faiss-encode", "faiss-search"):
        import faiss
        learn = vecio.read_vectors(args["learn"])
        base = vecio.read_vectors(args["base"])
        index = faiss.IndexPQ(base.shape[1], 8, 8)
        index.train(learn)
        started = time.perf_counter()
        index.add(base)
        result = {"n": len(base)}
        if name == "faiss-search":
            query = vecio.read_vectors(args["query"])
            started = time.perf_counter()
            _, ids = index.search(query, 100)
            from spreadcode.search import recall_at
            result = {"n": len(query),
                      "recall": recall_at(ids, vecio.read_groundtruth(args["gt"]))}
    else:
        raise SystemExit(f"unknown step {name}")
    result.setdefault("seconds", time.perf_counter() - started)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def write_synthetic(path, n, d, seed=0):
    """Random unit vectors, float32 (n, d), streamed to ``path`` (.fvecs) in 1M-row blocks."""
    rng = np.random.default_rng(seed)
    record = np.dtype([("dim", "<i4"), ("vec", "<f4", (d,))])
    with open(path, "wb") as fh:
        for start in range(0, n, 1 << 20):
            x = rng.standard_normal((min(1 << 20, n - start), d), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            rows = np.empty(len(x), dtype=record)
            rows["dim"], rows["vec"] = d, x
            fh.write(rows.tobytes())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default=None)
    parser.add_argument("--store", default=str(ROOT / "bench" / "cache" / "models"))
    parser.add_argument("--big", type=int, default=10, help="synthetic file = BIG x base")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.step:
        return run_step(opts.step, json.loads(opts.args))

    data = Path(opts.dataset)
    files = {name: str(data / f"{name}.fvecs") for name in ("learn", "base", "query")}
    files["gt"] = str(data / "groundtruth.ivecs")
    Path(opts.store).mkdir(parents=True, exist_ok=True)
    model = opts.model or cached_catalyzer(files["learn"], opts.store)
    common = {"model": model, "store": opts.store}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "base.spc")
        enc = step("encode", input=files["base"], output=db, **common)
        srch = step("search", db=db, query=files["query"], gt=files["gt"], **common)
        fenc = step("faiss-encode", learn=files["learn"], base=files["base"])
        fsrch = step("faiss-search", learn=files["learn"], base=files["base"],
                     query=files["query"], gt=files["gt"])
        rows.append((f"spreadcode ({enc['code']})", enc, srch))
        rows.append(("faiss IndexPQ M=8 x 8 bits", fenc, fsrch))
        print(f"dataset {data.name}: {enc['n']} base vectors, {srch['n']} queries, k=100, "
              f"{os.cpu_count()} cores")
        print()
        print("| method | encode vec/s | encode peak RSS MiB | search q/s | search peak RSS MiB "
              "| R@1 | R@10 | R@100 |")
        print("|---|---|---|---|---|---|---|---|")
        for name, e, s in rows:
            rec = s["recall"]  # keys are str after the JSON round trip
            print(f"| {name} | {e['n'] / e['seconds']:,.0f} | {e['peak_rss_mib']:.0f} | "
                  f"{s['n'] / s['seconds']:,.1f} | {s['peak_rss_mib']:.0f} | "
                  f"{100 * rec['1']:.1f} | {100 * rec['10']:.1f} | {100 * rec['100']:.1f} |")
        n_base = enc["n"]
        big = str(Path(tmp) / "big.fvecs")
        d = int(np.fromfile(files["base"], dtype=np.int32, count=1)[0])
        write_synthetic(big, n_base * opts.big, d)
        big_enc = step("encode", input=big, output=str(Path(tmp) / "big.spc"), **common)
        print()
        print("| encode input | vectors | input MiB | vec/s | peak RSS MiB |")
        print("|---|---|---|---|---|")
        for label, e, path in (("base.fvecs", enc, files["base"]),
                               (f"synthetic {opts.big}x", big_enc, big)):
            print(f"| {label} | {e['n']:,} | {os.path.getsize(path) / 2**20:,.0f} | "
                  f"{e['n'] / e['seconds']:,.0f} | {e['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
