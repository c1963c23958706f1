"""``spreadcode demo``: the whole pipeline on the bundled sample, in a couple of minutes.

Trains a 64-bit lattice catalyzer on the sample's 10,000 learn vectors, encodes its 10,000
base vectors into a .spc file, searches its 500 queries and reports 1-recall@1/10/100 and the
compression ratio. Everything goes to a temporary directory (model store included), so the
user's own store is left untouched.
"""
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import vecio
from .sample import load_sample

DEMO_EPOCHS = 10


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured."""

    model_sha256: str
    quantizer: str
    n_base: int
    n_query: int
    recall: dict
    compression_ratio: float
    train_s: float
    encode_s: float
    search_s: float

    def text(self):
        """A short human-readable report."""
        recall = "  ".join(f"1-recall@{k}={100 * v:.1f}%" for k, v in self.recall.items())
        return "\n".join([
            f"catalyzer {self.model_sha256[:12]} ({self.quantizer}), trained in "
            f"{self.train_s:.0f} s",
            f"encoded {self.n_base} vectors in {self.encode_s:.1f} s: "
            f"{self.compression_ratio:.1f}x smaller than float32",
            f"searched {self.n_query} queries in {self.search_s:.2f} s: {recall}",
        ])


def run_demo(epochs=None, progress=True) -> DemoReport:
    """Train, encode and search the bundled sample; return the measurements."""
    from .encode import encode_file
    from .index import Index
    from .search import recall_at
    from .training import train_command

    sample = load_sample()
    with tempfile.TemporaryDirectory(prefix="spreadcode-demo-") as tmp:
        tmp = Path(tmp)
        store = tmp / "models"
        base_path = tmp / "base.fvecs"
        vecio.write_vectors(base_path, sample.base)
        started = time.monotonic()
        trained = train_command(None, bits=64, epochs=epochs or DEMO_EPOCHS, store=store,
                                progress=progress)
        trained_at = time.monotonic()
        encoded = encode_file(base_path, tmp / "base.spc", model=trained.sha256, store=store,
                              progress=progress)
        encoded_at = time.monotonic()
        _, ids = Index.load(tmp / "base.spc", store=store).search(sample.query, k=100)
        searched_at = time.monotonic()
    return DemoReport(
        model_sha256=trained.sha256, quantizer=encoded.quantizer, n_base=encoded.count,
        n_query=len(sample.query), recall=recall_at(ids, sample.groundtruth),
        compression_ratio=encoded.compression_ratio, train_s=trained_at - started,
        encode_s=encoded_at - trained_at, search_s=searched_at - encoded_at)
