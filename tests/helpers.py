"""Helpers shared by the test modules: invoking the CLI and checking its one-line errors, a
tiny catalyzer and its metadata, and raw (possibly hostile) vector and .spc files that
spreadcode's writers would refuse."""
import hashlib
import struct

import numpy as np
from click.testing import CliRunner

from spreadcode import container
from spreadcode.cli import main


def run(*args):
    """Invoke the CLI; returns click's Result (``.exit_code``, ``.stdout``, ``.stderr``)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(result, *fragments):
    """One line on stderr naming the problem, non-zero exit, no traceback."""
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("spreadcode: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def tiny_catalyzer(d_out, seed=0, fit_rows=1000):
    """A catalyzer of the sample's 96 dims to ``d_out`` with seeded random weights, hidden
    width 32, preprocessing fitted on ``fit_rows`` sample learn vectors and BatchNorm
    statistics from 300 of them (no training)."""
    import torch

    from spreadcode.catalyzer import Catalyzer
    from spreadcode.sample import load_sample

    torch.manual_seed(seed)
    model = Catalyzer(96, d_out, 32)
    learn = load_sample().learn[:fit_rows]
    model.fit_preprocessing(torch.from_numpy(learn))
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(learn[:300]))
    return model.eval()


def tiny_meta(model, quantizer, lam=0.0):
    """The CatalyzerMeta of ``model`` coding with ``quantizer`` (the JSON {"kind", "d",
    "param"}), with no training record."""
    from spreadcode.catalyzer import CatalyzerMeta
    from spreadcode.quantizer import QuantizerSpec

    return CatalyzerMeta.for_model(model, QuantizerSpec.from_json(quantizer, "test"), lam, {})


def write_raw_fvecs(path, x):
    """Write float32 (n, d) as .fvecs bytes without vecio's checks (to make bad files)."""
    x = np.asarray(x, dtype=np.float32)
    dims = np.full((x.shape[0], 1), x.shape[1], dtype=np.int32)
    path.write_bytes(np.hstack([dims.view(np.float32), x]).tobytes())


def reseal(data, header=True, payload=True):
    """Recompute the checksums of .spc bytes after a deliberate edit, as far as the edited
    header allows (spec: the payload SHA-256 covers [payload_offset, end), the header SHA-256
    covers [0, payload_offset) with bytes 128..160 zeroed). Returns new bytes."""
    data = bytearray(data)
    if len(data) < container.HEADER_SIZE:
        return bytes(data)
    payload_offset = struct.unpack_from("<Q", data, 56)[0]
    if payload_offset > len(data):
        return bytes(data)
    if payload:
        data[96:128] = hashlib.sha256(data[payload_offset:]).digest()
    if header:
        data[128:160] = bytes(32)
        data[128:160] = hashlib.sha256(data[:payload_offset]).digest()
    return bytes(data)


def rehash_header(path):
    """Recompute the header SHA-256 of the .spc file at ``path`` after a header edit."""
    path.write_bytes(reseal(path.read_bytes(), payload=False))


def forge_spc(path, *, kind, d, param, bits, code_bytes, count=0, codes=b"", ids=None,
              metadata=b"{}", catalyzer=bytes(32), input_dim=96, input_dtype=1, blocks=(),
              header_size=None):
    """Write a .spc file with exactly these header fields and raw ``metadata`` / ``codes`` /
    ``ids`` bytes, checksums valid: the file a hostile writer could make. ``kind`` is the
    header's number (1 lattice, 2 sign, 3 product); ``blocks`` (d_m, r2_m) pairs are written
    as the block table after the fixed header; ``header_size`` defaults to 192 + 8 × blocks
    (more: zero bytes before the metadata)."""
    table = b"".join(container.BLOCK.pack(*pair) for pair in blocks)
    header_size = container.HEADER_SIZE + len(table) if header_size is None else header_size
    payload_offset = -(-(header_size + len(metadata)) // 64) * 64
    flags = 0 if ids is None else container.FLAG_HAS_IDS
    payload = codes
    if ids is not None:
        payload += bytes(-(payload_offset + len(codes)) % 8) + ids
    header = container.HEADER.pack(
        container.MAGIC, 1, 1 if blocks else 0, header_size, kind, input_dtype, 0, d, param,
        bits, code_bytes, input_dim, flags, len(metadata), count, payload_offset, catalyzer,
        bytes(32), bytes(32), bytes(32)) + table
    prefix = header + bytes(header_size - len(header)) + metadata
    path.write_bytes(reseal(prefix + bytes(payload_offset - len(prefix)) + payload))
    return path
