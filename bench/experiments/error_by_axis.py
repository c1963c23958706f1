"""Issue #14 diagnostic (lever 24): where the reconstruction error of a residual model and of
faiss LSQ7x8_Nqint8 lies, by bands of the learn set's principal axes, on raw 384-d text.
Run: python bench/experiments/error_by_axis.py  (expects /tmp/pypi-raw384 from make_raw384.py
and a default model trained on it at /tmp/s14/raw-default.safetensors, its store beside it;
edit the two paths for another set). Prints each method's mean squared error per band.
"""
import sys, numpy as np, faiss, time
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/bench/experiments")
from autoencoder_levers import load_dataset
from spreadcode.catalyzer import load_catalyzer
ds = load_dataset("/tmp/pypi-raw384")
model, meta = load_catalyzer("/tmp/s14/raw-default.safetensors", store="/tmp/s14/store")
ours = model.decode(model.encode(ds.base))
idx = faiss.index_factory(384, "LSQ7x8_Nqint8"); idx.train(ds.learn); idx.add(ds.base)
lsq = idx.reconstruct_n(0, len(ds.base))
mean = ds.learn.mean(0); _, s, vt = np.linalg.svd(ds.learn - mean, full_matrices=False)
for name, rec in (("ours", ours), ("lsq", lsq)):
    err = (ds.base - rec) @ vt.T          # error along the learn set's principal axes
    e = (err ** 2).mean(0)
    bands = [(0, 8), (8, 32), (32, 96), (96, 192), (192, 384)]
    print(name, "mse %.4f" % e.sum(), " ".join(f"{a}-{b}: {e[a:b].sum():.4f}" for a, b in bands))
var = (((ds.base - mean) @ vt.T) ** 2).mean(0)
print("variance", " ".join(f"{a}-{b}: {var[a:b].sum():.4f}" for a, b in [(0, 8), (8, 32), (32, 96), (96, 192), (192, 384)]))
