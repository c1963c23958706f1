"""Writes tests/data/release-0.1/: a tiny lattice catalyzer, a decoder of it, a .spc of 300
sample base vectors, 12 queries, and the search results of the release that wrote them."""
import sys, json
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, ".")
from spreadcode import __version__, vecio
from spreadcode.catalyzer import Catalyzer, save_catalyzer
from spreadcode.decoders import train_decoder, save_decoder
from spreadcode.sample import load_sample
import spreadcode
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
s = load_sample()
torch.manual_seed(0)
model = Catalyzer(96, 8, 32)
model.fit_preprocessing(torch.from_numpy(s.learn[:1000])); model.train()
with torch.no_grad(): model(torch.from_numpy(s.learn[:300]))
model.eval()
meta = {"quantizer": {"kind": "lattice", "d": 8, "param": 10}, "lambda": 0.0, "training": {}}
sha, _ = save_catalyzer(model, meta, path=out / "catalyzer.safetensors", store=out / "store")
net, dmeta = train_decoder(s.learn[:1000], model, {"sha256": sha, "quantizer": meta["quantizer"]}, kind="linear")
dsha, _ = save_decoder(net, dmeta, path=out / "decoder.safetensors", store=out / "store")
vecio.write_vectors(out / "queries.fvecs", s.query[:12])
index = spreadcode.Index.from_catalyzer(model, {**meta, "sha256": sha})
index.add(s.base[:300], ids=np.arange(300) * 7 - 11)
index.save(out / "db.spc", store=out / "store")
loaded = spreadcode.Index.load(out / "db.spc", store=out / "store")
D, I = loaded.search(s.query[:12], k=10)
withdec = spreadcode.Index.load(out / "db.spc", store=out / "store", decoder=dsha)
D2, I2 = withdec.search(s.query[:12], k=10, rerank=50)
np.savez(out / "expected.npz", distances=D, ids=I, rerank_distances=D2, rerank_ids=I2)
import shutil; shutil.rmtree(out / "store")
(out / "README.md").write_text(f"""Files written by spreadcode {__version__} (commit b53a0e1, before residual models), by
the script in the commit that added them: a lattice catalyzer S(8, 10) (sha256 {sha}),
a linear decoder of it ({dsha}), db.spc (300 sample base vectors, ids 7i - 11) and 12
queries; expected.npz holds that release's k=10 results, compressed-domain and re-ranked
(shortlist 50). tests/test_release_fixture.py checks that today's code reads and searches
them identically.
""")
print(sha, dsha)
