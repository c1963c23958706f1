"""Writes tests/data/residual-linear/: a tiny residual model as spreadcode wrote them before
the MLP shortlist decoder (an affine ``linear`` one), a .spc of 300 sample base vectors, 12
queries, and the search results of the commit that wrote them. Run in that checkout:
python tests/data/residual-linear/make_fixture.py OUT"""
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, ".")
import spreadcode  # noqa: E402
from spreadcode import residual, vecio  # noqa: E402
from spreadcode.catalyzer import save_catalyzer  # noqa: E402
from spreadcode.sample import load_sample  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
s = load_sample()
config = residual.ResidualConfig(blocks=residual.stage_blocks(24), hidden=32, hidden_decoder=64,
                                 epochs=2, batch_size=64, device="cpu")
result = residual.train_residual(s.learn[:2000], config, progress=False)
sha, _ = save_catalyzer(result.model, result.meta, path=out / "model.safetensors",
                        store=out / "store")
vecio.write_vectors(out / "queries.fvecs", s.query[:12])
index = spreadcode.Index.from_catalyzer(result.model, result.meta)
index.add(s.base[:300], ids=np.arange(300) * 5 + 3)
index.save(out / "db.spc", store=out / "store")
loaded = spreadcode.Index.load(out / "db.spc", store=out / "store")
results = {}
for name, rerank in (("default", None), ("rerank50", 50), ("shortlist", 0)):
    distances, ids = loaded.search(s.query[:12], k=10, rerank=rerank)
    results[f"{name}_distances"], results[f"{name}_ids"] = distances, ids
np.savez(out / "expected.npz", **results)
shutil.rmtree(out / "store")
print(sha)
