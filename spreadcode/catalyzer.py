"""The catalyzer: an MLP that maps input vectors onto the unit sphere of R^d_out, and its model file.

Architecture (Sablayrolles et al. 2019, §4): preprocessing (centre, then one global scale, both
learned from the training set and stored as buffers so encode and search apply exactly the same
transform) -> Linear(d_in, h) - BatchNorm - ReLU - Linear(h, h) - BatchNorm - ReLU -
Linear(h, d_out) -> L2 normalisation.

Model file: safetensors with the module's state dict and one JSON metadata string (keys sorted)
``{"artifact": "catalyzer", "format_version": 1, "arch": {"d_in", "hidden", "d_out"},
"quantizer": {"kind", "d", "param"}, "lambda", "training": {...}}``, in memory a
`CatalyzerMeta` (``.to_json()``). The same weights and metadata give the same bytes, hence the
same SHA-256, which names the model in the store.
"""
import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from spreadcode import store as model_store
from spreadcode.errors import SpreadcodeError
from spreadcode.fileio import canonical_json
from spreadcode.quantizer import QuantizerSpec, metadata_error

ARTIFACT_KIND = "catalyzer"
# No layer of a model file is wider than this (input dimension, hidden width, output).
MAX_WIDTH = 1 << 20
# torch dtype -> its name in safetensors headers.
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                      torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
                      torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


class Preprocessed(nn.Module):
    """Base of spreadcode's encoders: buffers ``center`` float32 (d_in,) and ``scale`` float32
    (1,) hold the preprocessing ``(x - center) * scale``, set from training vectors by
    `fit_preprocessing`, so that encode and search apply exactly the training transform."""

    def __init__(self, d_in):
        super().__init__()
        self.d_in = int(d_in)
        self.register_buffer("center", torch.zeros(self.d_in))
        self.register_buffer("scale", torch.ones(1))

    @torch.no_grad()
    def fit_preprocessing(self, x):
        """Centre on the mean and divide by the RMS coordinate of the centred vectors.

        x: float32 tensor (n, d_in). Makes training invariant to the data's offset and global
        scale (uint8 SIFT in 0..255 and unit-norm embeddings train alike) without changing
        neighbourhoods. Raises SpreadcodeError when all vectors are identical.
        """
        center = x.double().mean(dim=0)
        rms = ((x.double() - center) ** 2).mean().sqrt()
        if not rms > 0:
            raise SpreadcodeError("all training vectors are identical: nothing to learn")
        self.center.copy_(center.float())
        self.scale.fill_(float(1.0 / rms))

    def preprocess(self, x):
        """(x - center) * scale for a tensor (n, d_in)."""
        return (x - self.center) * self.scale

    def unprocess(self, xs):
        """The inverse of `preprocess`."""
        return xs / self.scale + self.center


class Catalyzer(Preprocessed):
    """Preprocessing + 3-layer MLP + L2 normalisation: float32 (n, d_in) -> unit float32 (n, d_out)."""

    def __init__(self, d_in, d_out, hidden=1024):
        super().__init__(d_in)
        self.d_out, self.hidden = int(d_out), int(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(self.d_in, self.hidden), nn.BatchNorm1d(self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.hidden), nn.BatchNorm1d(self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.d_out),
        )

    def arch(self):
        """The model file's "arch" object."""
        return {"d_in": self.d_in, "hidden": self.hidden, "d_out": self.d_out}

    def forward(self, x):
        """x: float32 tensor (n, d_in) -> float32 tensor (n, d_out) of unit rows."""
        return nn.functional.normalize(self.mlp(self.preprocess(x)), dim=1)


def model_device(model):
    """The torch device the model's parameters live on."""
    return next(model.parameters()).device


FORWARD_BATCH = 2048


def catalyze(model, vectors, batch=FORWARD_BATCH):
    """Map vectors through the catalyzer (eval mode, no gradients, in chunks of ``batch`` rows).

    Small chunks keep the hidden activations (batch x 1024 floats) in cache: on a 2-core CPU
    2048 rows run ~1.5x faster than 65536 and need 32x less memory (bench/encode_search.py).

    vectors: array-like (n, d_in), any real dtype (converted to float32) ->
    float32 (n, d_out) unit rows, C-contiguous numpy. Raises SpreadcodeError for a wrong shape
    or dimension (naming both) and for NaN/Inf values.
    """
    return forward_batches(model, vectors, lambda x: model(x).cpu().numpy(), model.d_out,
                           np.float32, batch)


def forward_batches(model, vectors, forward, width, dtype, batch=FORWARD_BATCH):
    """``forward`` (float32 tensor (b, d_in) on the model's device -> numpy (b, width)) over
    ``vectors`` (n, d_in), any real dtype, ``batch`` rows at a time, in eval mode without
    gradients: numpy ``dtype`` (n, width). SpreadcodeError for a wrong shape or dimension
    (naming both) and for NaN/Inf values (naming the first bad row)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != model.d_in:
        got = vectors.shape[1] if vectors.ndim == 2 else f"shape {vectors.shape}"
        raise SpreadcodeError(f"vectors have dimension {got} but the catalyzer expects d_in={model.d_in}")
    if not np.issubdtype(vectors.dtype, np.number) or np.issubdtype(vectors.dtype, np.complexfloating):
        raise SpreadcodeError(f"vectors must be real numbers, got dtype {vectors.dtype}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    out = np.empty((vectors.shape[0], width), dtype=dtype)
    try:
        with torch.no_grad():
            for start in range(0, vectors.shape[0], batch):
                chunk = np.ascontiguousarray(vectors[start:start + batch], dtype=np.float32)
                finite = np.isfinite(chunk).all(axis=1)
                if not finite.all():
                    raise SpreadcodeError(
                        f"vector {start + int(np.argmin(finite))} contains NaN or Inf values")
                out[start:start + batch] = forward(torch.from_numpy(chunk).to(device))
    finally:
        model.train(was_training)
    return out


def catalyzer_bytes(model, meta):
    """The model file's bytes: safetensors of the state dict + ``meta.to_json()`` (a
    CatalyzerMeta describing ``model``). Deterministic: identical weights and meta give
    identical bytes."""
    if meta.arch() != model.arch():
        raise SpreadcodeError(f"catalyzer metadata describes arch {meta.arch()}, but the "
                              f"network is {model.arch()}")
    return state_dict_bytes(model, canonical_json(meta.to_json()))


def state_dict_bytes(module, metadata_json):
    """safetensors bytes of ``module``'s state dict (CPU, contiguous) with ``metadata_json`` (the
    sorted-key JSON string) under the store's metadata key. Shared by every torch artifact kind."""
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in module.state_dict().items()}
    return safetensors.torch.save(tensors, metadata={model_store.METADATA_KEY: metadata_json})


def is_width(value):
    """Whether ``value`` can be a layer width of a model file: an int in 1..MAX_WIDTH."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WIDTH


def check_width(value, where, field):
    """``value`` if it can be a layer width (`is_width`), else SpreadcodeError naming ``field``."""
    if not is_width(value):
        raise metadata_error(where, field, f"{value!r} is not an integer from 1 to {MAX_WIDTH}")
    return value


def check_number(value, where, field, positive=False):
    """``value`` if it is a finite JSON number >= 0 (> 0 when ``positive``; not a boolean),
    else SpreadcodeError naming ``field``."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise metadata_error(where, field,
                             f"{value!r} is not a number {'> 0' if positive else '>= 0'}")
    return value


# The kinds of network a catalyzer file may hold ("arch.type"; absent means "mlp").
ARCH_TYPES = ("mlp", "residual")


@dataclass(frozen=True)
class CatalyzerMeta:
    """A catalyzer's metadata: the network's widths ``d_in``, ``hidden``, ``d_out``, the
    ``quantizer`` (QuantizerSpec) of its codes, the KoLeo weight ``lam`` (None when unknown)
    and the ``training`` record (a JSON object, kept as it is). ``arch_type`` "residual"
    marks a `spreadcode.residual.ResidualCatalyzer` (product code, one stage per block;
    ``hidden_decoder`` its decoders' width, ``hidden_chain`` that of the decoders that
    encoding runs (None: ``hidden_decoder``, models written before it), ``hidden_shortlist``
    its shortlist decoder's, None in models written before that decoder was an MLP;
    ``output_norm`` the sphere its decoders decode onto, None when its learn set's norm was
    not constant or for models written before; ``rerank_blend`` the weight of the shortlist
    decoder's distance in its re-ranking, None (0) for models written before it;
    ``chain_dim`` the width of the learned projection its stages read x and x̂ through, None
    when they read them whole), "mlp" the paper's catalyzer. ``sha256`` and
    ``path``: the model file's hash and path when loaded from one (`load_catalyzer`), None for
    a model not saved yet; they are not part of the file's JSON (`to_json`). The quantizer's
    dimension must be d_out (SpreadcodeError otherwise)."""

    d_in: int
    hidden: int
    d_out: int
    quantizer: QuantizerSpec
    lam: float | None
    training: dict
    arch_type: str = "mlp"
    hidden_decoder: int | None = None
    hidden_shortlist: int | None = None
    output_norm: float | None = None
    hidden_chain: int | None = None
    rerank_blend: float | None = None
    chain_dim: int | None = None
    sha256: str | None = None
    path: str | None = None

    def __post_init__(self):
        """The quantizer codes the network's output: its dimension must be d_out."""
        if self.quantizer.d != self.d_out:
            raise SpreadcodeError(f"quantizer dimension {self.quantizer.d} != catalyzer d_out "
                                  f"{self.d_out}")

    @classmethod
    def for_model(cls, model, quantizer, lam, training):
        """The metadata of ``model`` (a Catalyzer or ResidualCatalyzer) whose codes are
        ``quantizer`` (QuantizerSpec)."""
        arch = model.arch()
        return cls(arch["d_in"], arch["hidden"], arch["d_out"], quantizer, lam, training,
                   arch.get("type", "mlp"), arch.get("hidden_decoder"),
                   arch.get("hidden_shortlist"), arch.get("output_norm"),
                   arch.get("hidden_chain"), arch.get("rerank_blend"), arch.get("chain_dim"))

    @classmethod
    def from_json(cls, meta, path):
        """Check a catalyzer file's metadata (JSON object); SpreadcodeError
        "<path>: corrupt catalyzer metadata (bad '<field>': why)" naming the first bad field."""
        where = f"{path}: corrupt catalyzer metadata"
        arch = meta.get("arch")
        if not isinstance(arch, dict):
            raise metadata_error(where, "arch", "not an object")
        arch_type = arch.get("type", "mlp")
        if arch_type not in ARCH_TYPES:
            raise metadata_error(where, "arch.type", f"{arch_type!r} is not one of "
                                 f"{', '.join(ARCH_TYPES)}")
        widths = [check_width(arch.get(key), where, f"arch.{key}")
                  for key in ("d_in", "hidden", "d_out")]
        hidden_decoder = hidden_chain = hidden_shortlist = output_norm = rerank_blend = None
        chain_dim = None
        if arch_type == "residual":
            hidden_decoder = check_width(arch.get("hidden_decoder"), where, "arch.hidden_decoder")
            if "hidden_chain" in arch:
                hidden_chain = check_width(arch["hidden_chain"], where, "arch.hidden_chain")
            if "hidden_shortlist" in arch:
                hidden_shortlist = check_width(arch["hidden_shortlist"], where,
                                               "arch.hidden_shortlist")
            if "output_norm" in arch:
                output_norm = float(check_number(arch["output_norm"], where, "arch.output_norm",
                                                 positive=True))
            if "rerank_blend" in arch:
                rerank_blend = float(check_number(arch["rerank_blend"], where,
                                                  "arch.rerank_blend"))
            if "chain_dim" in arch:
                chain_dim = check_width(arch["chain_dim"], where, "arch.chain_dim")
        quantizer = QuantizerSpec.from_json(meta.get("quantizer"), where)
        if quantizer.d != widths[2]:
            raise SpreadcodeError(f"{where} (quantizer dimension {quantizer.d} != d_out "
                                  f"{widths[2]})")
        if arch_type == "residual" and quantizer.kind != "product":
            raise metadata_error(where, "quantizer.kind", f"a residual network makes product "
                                 f"codes, not {quantizer.kind}")
        lam = meta.get("lambda")
        if lam is not None:
            check_number(lam, where, "lambda")
        training = meta.get("training", {})
        if not isinstance(training, dict):
            raise metadata_error(where, "training", "not an object")
        return cls(*widths, quantizer, lam, training, arch_type, hidden_decoder, hidden_shortlist,
                   output_norm, hidden_chain, rerank_blend, chain_dim)

    def arch(self):
        """The model file's "arch" object, as the network's ``arch()`` gives it."""
        arch = {"d_in": self.d_in, "hidden": self.hidden, "d_out": self.d_out}
        if self.arch_type == "residual":
            arch = {"type": "residual", **arch, "hidden_decoder": self.hidden_decoder}
            if self.hidden_chain is not None:
                arch["hidden_chain"] = self.hidden_chain
            if self.hidden_shortlist is not None:
                arch["hidden_shortlist"] = self.hidden_shortlist
            if self.output_norm is not None:
                arch["output_norm"] = self.output_norm
            if self.rerank_blend is not None:
                arch["rerank_blend"] = self.rerank_blend
            if self.chain_dim is not None:
                arch["chain_dim"] = self.chain_dim
        return arch

    def to_json(self):
        """The JSON object the model file holds (`catalyzer_bytes` writes it with sorted keys)."""
        return {"artifact": ARTIFACT_KIND, "format_version": model_store.FORMAT_VERSION,
                "arch": self.arch(), "quantizer": self.quantizer.to_json(),
                "lambda": self.lam, "training": self.training}

    def build(self):
        """The (untrained) network this metadata describes."""
        if self.arch_type == "residual":
            from spreadcode.residual import ResidualCatalyzer

            return ResidualCatalyzer(self.d_in, self.quantizer.quantizer(), self.hidden,
                                     self.hidden_decoder, self.hidden_shortlist, self.output_norm,
                                     self.hidden_chain, self.rerank_blend, self.chain_dim)
        return Catalyzer(self.d_in, self.d_out, self.hidden)


def load_module(path, build, what):
    """Build the network an artifact's metadata describes and fill it from the file.

    ``build()`` makes the module. It is built on torch's meta device (no memory) and the
    names, dtypes and shapes of its state dict are compared with the tensors listed in the
    file's header (`spreadcode.store.read_tensors`, which checks they fill exactly their
    bytes), so metadata that promises a larger network than the file holds is refused before
    anything is allocated. Then the tensors are read, must be finite, and become the
    module's (copied out of the file's bytes, which they would otherwise alias; assigning
    them instead of moving the meta module to the CPU first spares torch's `to_empty`, whose
    first call imports sympy: 0.35 s of every command that loads a model).
    Returns (module in eval mode on the CPU, hex SHA-256 of the file bytes); SpreadcodeError
    "corrupt <what>" otherwise.
    """
    path = Path(path)
    listed = model_store.read_tensors(path)
    with torch.device("meta"):
        module = build()
    expected = {name: (SAFETENSORS_DTYPES.get(tensor.dtype), tuple(tensor.shape))
                for name, tensor in module.state_dict().items()}
    if listed != expected:
        raise SpreadcodeError(f"{path}: corrupt {what}")
    data = path.read_bytes()
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error type for malformed data
        raise SpreadcodeError(f"{path}: corrupt model file ({exc})") from None
    if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        raise SpreadcodeError(f"{path}: corrupt {what}: weights hold NaN or Inf")
    module.load_state_dict({name: tensor.clone() for name, tensor in tensors.items()},
                           assign=True)
    module.requires_grad_(True)  # torch < 2.3 gives assigned parameters the tensors' False
    module.eval()
    return module, hashlib.sha256(data).hexdigest()


def save_catalyzer(model, meta, path=None, store=None):
    """Save the model into the store (``<store>/<sha>.safetensors``) and, if given, to exactly ``path``.

    meta: its CatalyzerMeta (see `catalyzer_bytes`). Returns (sha256 hex, Path in the store).
    """
    data = catalyzer_bytes(model, meta)
    sha, stored = model_store.save_artifact(data, store)
    if path is not None:
        model_store.write_file(path, data)
    return sha, stored


def load_catalyzer(ref, store=None):
    """Load a catalyzer by path, hash (or unique prefix ≥ 8 hex digits) or "latest".

    Returns (model in eval mode on the CPU, CatalyzerMeta with ``sha256`` (hash of the file
    bytes) and ``path``). Raises SpreadcodeError for foreign, corrupt or non-catalyzer files.
    """
    path = model_store.resolve(ref, store, kind=ARTIFACT_KIND)
    raw = model_store.read_metadata(path)
    if raw["artifact"] != ARTIFACT_KIND:
        raise SpreadcodeError(f"{path}: a {raw['artifact']!r} artifact, not a catalyzer")
    meta = CatalyzerMeta.from_json(raw, path)
    model, sha = load_module(path, meta.build,
                             f"catalyzer (tensors do not match arch {raw['arch']})")
    return model, replace(meta, sha256=sha, path=str(path))
