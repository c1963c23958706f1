"""Issue #12, through the CLI: no input destroys data or escapes as a crash.

One test (or a few) per defect the fuzzing run found: outputs that alias inputs, k beyond the
collection or beyond reason, ids that an output format cannot hold, model metadata that lies
about its tensors, forged .spc headers with valid checksums, and SIGTERM / SIGKILL leaving
temporary files behind. Everything runs on a tiny random catalyzer (hidden width 32), so the
module takes a few seconds.
"""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run
from spreadcode import vecio
from spreadcode.catalyzer import Catalyzer, save_catalyzer
from spreadcode.decoders import save_decoder, train_decoder
from spreadcode.sample import exact_neighbors, load_sample
from spreadcode.search import encode_file

REPO = Path(__file__).resolve().parents[1]
QUANTIZER = {"kind": "lattice", "d": 24, "param": 79}
N_BASE, N_QUERY = 2000, 50


def tiny_catalyzer():
    """A catalyzer of the sample's 96 dims with seeded random weights and hidden width 32."""
    torch.manual_seed(0)
    model = Catalyzer(96, QUANTIZER["d"], 32)
    learn = load_sample().learn[:1000]
    model.fit_preprocessing(torch.from_numpy(learn))
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(learn[:300]))
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with the tiny catalyzer (also written to model.safetensors) and a linear decoder
    of it; base (2,000), queries (50, .fvecs and .npy), their ground truth, and db.spc."""
    root = tmp_path_factory.mktemp("robust")
    sample = load_sample()
    store = root / "store"
    model = tiny_catalyzer()
    sha, _ = save_catalyzer(model, {"quantizer": QUANTIZER, "lambda": 0.0, "training": {}},
                            path=root / "model.safetensors", store=store)
    net, meta = train_decoder(sample.learn[:1000], model, {"sha256": sha, "quantizer": QUANTIZER},
                              kind="linear")
    decoder, _ = save_decoder(net, meta, store=store)
    vecio.write_vectors(root / "base.fvecs", sample.base[:N_BASE])
    vecio.write_vectors(root / "learn.fvecs", sample.learn[:1000])
    vecio.write_vectors(root / "q.fvecs", sample.query[:N_QUERY])
    np.save(root / "q.npy", sample.query[:N_QUERY])
    gt = exact_neighbors(sample.base[:N_BASE], sample.query[:N_QUERY], 10)
    vecio.write_vectors(root / "gt.ivecs", gt.astype(np.int32))
    encode_file(root / "base.fvecs", root / "db.spc", model=sha, store=store)
    return {"root": root, "store": store, "sha": sha, "decoder": decoder,
            "model_file": root / "model.safetensors", "db": root / "db.spc",
            "q": root / "q.fvecs", "base": root / "base.fvecs", "learn": root / "learn.fvecs"}


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(directory):
    return sorted(p.name for p in Path(directory).iterdir())


# ---- 8. SIGTERM and SIGKILL ------------------------------------------------------------------

def start_slow_encode(world, tmp_path, source):
    """Encode ``source`` one vector per batch in a real process; returns it once its temporary
    output exists."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "spreadcode.cli", "encode", str(source), "-o",
         str(tmp_path / "big.spc"), "--model", world["sha"], "--store", str(world["store"]),
         "--batch", "1", "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".big.spc.*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process


def test_sigterm_cleans_up_and_sigkill_leftovers_go_at_the_next_write(world, tmp_path):
    source = tmp_path / "many.npy"
    np.save(source, np.tile(load_sample().base[:1000], (40, 1)))
    terminated = start_slow_encode(world, tmp_path, source)
    terminated.send_signal(signal.SIGTERM)
    _, stderr = terminated.communicate(timeout=30)
    assert terminated.returncode == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr and b"terminated" in stderr
    assert listing(tmp_path) == ["many.npy"]

    killed = start_slow_encode(world, tmp_path, source)
    killed.kill()
    killed.communicate(timeout=30)
    leftover = [name for name in listing(tmp_path) if name != "many.npy"]
    assert len(leftover) == 1 and leftover[0].startswith(".big.spc.spreadcode-tmp-")
    result = run("encode", world["base"], "-o", tmp_path / "big.spc", "--model", world["sha"],
                 "--store", world["store"], "-q")
    assert result.exit_code == 0, result.output
    assert listing(tmp_path) == ["big.spc", "many.npy"]
