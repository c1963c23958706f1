"""Encoding: catalyze and quantize vectors into the codes a .spc file stores.

`encode_codes` does it for an array (the one implementation, used by `spreadcode.index.Index`
and by `encode_file`); `encode_file` streams a vector file into a .spc file
(``spreadcode encode``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import __version__, container, vecio
from . import store as model_store
from .errors import SpreadcodeError
from .quantizer import describe_quantizer


@dataclass(frozen=True)
class EncodeSummary:
    """What `encode_file` wrote: counts, sizes and the code format."""

    output: str
    count: int
    input_dim: int
    input_bytes: int
    output_bytes: int
    quantizer: str
    bits: int
    catalyzer_sha256: str

    @property
    def compression_ratio(self) -> float:
        """Bytes of the float32 input vectors over bytes of the .spc file."""
        return self.input_bytes / max(self.output_bytes, 1)


def encode_codes(catalyzer, quantizer, vectors):
    """Codes as a .spc stores them, uint8 (n, code_bytes), of vectors (n, d_in) of any real
    dtype: the catalyzer's output quantized, or a residual model's stages
    (`spreadcode.residual.ResidualCatalyzer.encode`). SpreadcodeError for a wrong dimension,
    NaN or Inf."""
    from .catalyzer import catalyze
    from .residual import ResidualCatalyzer

    if isinstance(catalyzer, ResidualCatalyzer):
        return catalyzer.encode(vectors)
    return quantizer.codes_to_bytes(quantizer.quantize(catalyze(catalyzer, vectors)))


def _check_dim(d_in, meta, what):
    """SpreadcodeError naming ``what`` unless vectors of dimension ``d_in`` fit the catalyzer
    of CatalyzerMeta ``meta``."""
    if d_in != meta.d_in:
        raise SpreadcodeError(
            f"{what}: vectors have dimension {d_in}, but catalyzer "
            f"{meta.sha256[:12]} expects {meta.d_in}")


def encode_file(input_path, output_path, *, model="latest", store=None, batch=65536,
                dataset=None, progress=False) -> EncodeSummary:
    """Catalyze and quantize every vector of ``input_path`` into the .spc file ``output_path``.

    Streams ``batch`` vectors at a time (peak memory ~ batch × d_in floats plus the
    catalyzer's forward chunk, not the input size); the output appears only when complete
    (temp file + rename). The same input and model always give byte-identical files.
    """
    from .catalyzer import load_catalyzer

    model_file = model_store.resolve(model, store)
    vecio.check_outputs([output_path], [input_path, model_file])
    vectors = vecio.open_vectors(input_path, dataset=dataset)
    catalyzer, meta = load_catalyzer(model_file, store=store)
    _check_dim(vectors.d, meta, f"{input_path}")
    quantizer = meta.quantizer.quantizer()
    chunks = vectors.chunks(batch)
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, total=-(-vectors.n // batch), unit="batch",
                      desc=f"encode {os.path.basename(str(input_path))}")
    with container.SpcWriter(
        output_path, kind=quantizer.kind, d=quantizer.d, param=quantizer.param,
        bits=quantizer.bits, code_bytes=quantizer.code_bytes, input_dim=vectors.d,
        input_dtype=str(vectors.dtype), catalyzer_sha256=meta.sha256,
        metadata={"creator": f"spreadcode {__version__}",
                  "source": os.path.basename(str(input_path))},
    ) as writer:
        for chunk in chunks:
            writer.append(encode_codes(catalyzer, quantizer, chunk))
    return EncodeSummary(
        output=str(output_path), count=vectors.n, input_dim=vectors.d,
        input_bytes=vectors.n * vectors.d * 4, output_bytes=os.path.getsize(output_path),
        quantizer=describe_quantizer(quantizer), bits=quantizer.bits,
        catalyzer_sha256=meta.sha256)
