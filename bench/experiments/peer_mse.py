"""Issue #14: reconstruction error (squared L2, mean over base) and 1-recall@1/10/100 of faiss peers,
the yardstick for decoder quality. Usage: python bench/experiments/peer_mse.py DATA_DIR PQ8 OPQ8,PQ8 ..."""
import os, sys, numpy as np, faiss, time
sys.path.insert(0, os.environ.get("SPREADCODE_SRC", "."))
from bench._data import load_dataset
faiss.omp_set_num_threads(1)
ds = load_dataset(sys.argv[1])
for key in sys.argv[2:]:
    t=time.time()
    idx = faiss.index_factory(ds.learn.shape[1], key)
    idx.train(ds.learn); idx.add(ds.base)
    rec = idx.reconstruct_n(0, ds.base.shape[0])
    mse = float(((rec - ds.base) ** 2).sum(1).mean())
    D, I = idx.search(ds.query, 100)
    r = [round(100*float((I[:, :k] == ds.groundtruth[:, :1]).any(1).mean()),1) for k in (1,10,100)]
    print(key, "mse", round(mse,4), r, round(time.time()-t), flush=True)
