"""`Index`: spreadcode as a faiss-style Python object, numpy in, numpy out.

An index holds a catalyzer (and optionally a learned decoder), its quantizer, and a collection
of codes with their ids: codes added in memory, or the .spc files it was loaded from
(memory-mapped). Everything the CLI does goes through the same collection, encoding and
search functions (`spreadcode.collection`, `spreadcode.encode`, `spreadcode.search`), so an
index and ``spreadcode search`` over the same .spc file give identical results::

    index = spreadcode.Index.train(learn, bits=64)      # or spreadcode.Index(model="latest")
    index.add(base)
    D, I = index.search(queries, k=10)
    index.save("db.spc")                                # the catalyzer goes into the store
    index = spreadcode.Index.load("db.spc")
"""
from __future__ import annotations

import hashlib
import numbers
import os
from dataclasses import replace

import numpy as np

from . import __version__, container, search
from .collection import Collection, MemoryPart, open_collection
from .encode import encode_codes
from .errors import SpreadcodeError
from .quantizer import QuantizerSpec, describe_quantizer


class Index:
    """Codes of one catalyzer + quantizer, searchable like a faiss index.

    ``Index(model="latest", decoder=None, store=None)`` starts empty with a catalyzer from the
    model store (hash, unique prefix, path or "latest"); `Index.train` trains one in memory;
    `Index.load` opens .spc files and collection directories. ``decoder`` (a reference or a loaded
    `spreadcode.decoders.Decoder`) enables re-ranking and decoded search. ``len(index)``: the
    number of codes; ``index.d``: the input dimension; ``index.bits``: bits per code.
    """

    def __init__(self, model="latest", *, decoder=None, store=None):
        from .catalyzer import load_catalyzer

        catalyzer, meta = load_catalyzer(model, store=store)
        self._setup(Collection((), meta.quantizer.quantizer(), meta.sha256),
                    (catalyzer, meta), decoder, store, input_dtype="float32")

    def _setup(self, collection, catalyzer, decoder, store, input_dtype, model=None,
               client=None):
        """Fill the fields: ``catalyzer`` (model, meta) or None (loaded on first use from
        ``model`` or the collection's hash), ``decoder`` reference, Decoder or None, the
        dask.distributed ``client`` of searches or None."""
        self._client = client
        self._collection = collection
        self._catalyzer = catalyzer
        self._model = model
        self._store = store
        self._input_dtype = input_dtype
        self.decoder = None
        if decoder is not None:
            from .decoders import Decoder, load_decoder

            self.decoder = decoder if isinstance(decoder, Decoder) else load_decoder(decoder, store)
            search.check_decoder_fits(self.decoder, collection)

    @classmethod
    def train(cls, learn, bits=64, *, quantizer="residual", dout=None, r2=None, lam=None,
              epochs=None, time_budget_min=None, hidden=None, device="auto", seed=0,
              progress=False, store=None, save_model=False):
        """A new empty index with a catalyzer trained on ``learn`` (array (n, d), any real
        dtype), in memory: by default a residual lattice model (`spreadcode.residual`), which
        decodes its own codes; ``quantizer="lattice"`` or ``"sign"``: the paper's catalyzer.
        The options are ``spreadcode train``'s (`spreadcode.training.command_config`;
        ``hidden``: the encoder's MLP width). With ``save_model`` the catalyzer is also saved
        into the model store ``store``."""
        from .catalyzer import save_catalyzer
        from .training import command_config, train_catalyzer

        config = command_config(bits, quantizer, dout=dout, r2=r2, lam=lam, epochs=epochs,
                                time_budget_min=time_budget_min, device=device, seed=seed,
                                hidden=hidden)
        result = train_catalyzer(learn, config, progress=progress, auto_lambda=lam == "auto")
        if save_model:
            save_catalyzer(result.model, result.meta, store=store)
        return cls.from_catalyzer(result.model, result.meta, store=store)

    @classmethod
    def from_catalyzer(cls, catalyzer, meta, *, quantizer=None, decoder=None, store=None):
        """A new empty index with a catalyzer held in memory: ``catalyzer`` (torch module)
        and its CatalyzerMeta (as from `spreadcode.training.train_catalyzer` or
        `spreadcode.catalyzer.load_catalyzer`). ``quantizer`` replaces the one in ``meta`` (a
        quantizer of the catalyzer's output dimension; the model file the index saves then
        names it)."""
        if quantizer is not None:
            meta = replace(meta, quantizer=QuantizerSpec(quantizer.kind, quantizer.d,
                                                         quantizer.param), sha256=None, path=None)
        index = cls.__new__(cls)
        index._setup(Collection((), meta.quantizer.quantizer(),
                                _catalyzer_sha256(catalyzer, meta)),
                     (catalyzer, meta), decoder, store, input_dtype="float32")
        return index

    @classmethod
    def load(cls, paths, *, model=None, decoder=None, store=None, verify=True, client=None,
             decode_memory=None):
        """An index over the .spc file(s) and collection directories ``paths`` (one path or a
        list: one collection, global ids in file order), memory-mapped. The catalyzer is the
        one named in the headers, from ``store``, or ``model`` (it must have the headers'
        hash); it is loaded when first needed. ``verify`` recomputes the files' checksums.

        ``client``: a dask.distributed Client (`spreadcode.distributed.open_client`): its
        workers then verify the checksums (one task per file) and run every search, one task
        per (file, query batch), reading the files by path (a filesystem they share); the
        results are identical to a search in this process. ``decode_memory``: see the
        property."""
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        check_decode_memory(decode_memory)
        collection = open_collection(paths, verify=verify and client is None)
        if verify and client is not None:
            from .distributed import verify_parts

            verify_parts(client, collection)
        index = cls.__new__(cls)
        input_dtype = collection.parts[0].header.input_dtype if collection.parts else "float32"
        index._setup(collection, None, decoder, store, input_dtype, model=model, client=client)
        index.decode_memory = decode_memory
        return index

    @property
    def catalyzer(self):
        """The catalyzer (torch module, eval mode, CPU)."""
        return self._catalyzer_and_meta()[0]

    @property
    def catalyzer_meta(self):
        """The catalyzer's `spreadcode.catalyzer.CatalyzerMeta`: its widths, its code and the
        report of its training (``training``: epochs run, held-out error and recall, ...)."""
        return self._catalyzer_and_meta()[1]

    def _catalyzer_and_meta(self):
        """(catalyzer, CatalyzerMeta), loaded when first needed (`search.collection_catalyzer`)."""
        if self._catalyzer is None:
            self._catalyzer = search.collection_catalyzer(self._collection, self._model,
                                                          self._store)
        return self._catalyzer

    @property
    def is_residual(self):
        """Whether the codes come from a residual model (`spreadcode.residual`), which
        searches and reconstructs with its own decoders."""
        from .residual import ResidualCatalyzer

        return isinstance(self.catalyzer, ResidualCatalyzer)

    @property
    def quantizer(self):
        """The quantizer of the codes (`spreadcode.quantizer`)."""
        return self._collection.quantizer

    @property
    def catalyzer_sha256(self):
        """SHA-256 (hex) of the catalyzer's model file bytes (None: a file that names none)."""
        return self._collection.catalyzer_sha256

    @property
    def d(self):
        """Input dimension of the vectors."""
        if self._catalyzer is None and self._collection.parts:
            return self._collection.parts[0].header.input_dim
        return self.catalyzer.d_in

    @property
    def bits(self):
        """Bits per code."""
        return self.quantizer.bits

    @property
    def ntotal(self):
        """Number of codes (faiss's name; also ``len(index)``)."""
        return self._collection.count

    def __len__(self):
        return self._collection.count

    def __repr__(self):
        sha = self.catalyzer_sha256
        decoder = f", decoder {self.decoder.kind} {self.decoder.sha256[:12]}" if self.decoder else ""
        return (f"<spreadcode.Index {len(self)} codes, d={self.d}, "
                f"{describe_quantizer(self.quantizer)} ({self.bits} bits), "
                f"catalyzer {sha[:12] if sha else 'none'}{decoder}>")

    def add(self, x, ids=None, beam=1, precision="auto"):
        """Catalyze, quantize and add vectors ``x`` (n, d), any real dtype; ``ids`` int (n,)
        names them (default: their position in the index). An index uses explicit ids for
        all its vectors or for none. ``beam`` > 1: a residual model's beam search over
        partial codes (`spreadcode.residual.ResidualCatalyzer.encode`: better codes, several
        times the encoding time); ``precision`` "float32" keeps a residual model's products
        in float32 ("auto": encoding in int8 on a CPU, other products in bfloat16
        where the device multiplies it natively: 2.5-3× as fast;
        `spreadcode.residual.PRECISIONS`). SpreadcodeError for a wrong shape, NaN or Inf."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise SpreadcodeError(f"vectors must be a 2-D array (n, d), got shape {x.shape}")
        parts = self._collection.parts
        has_ids = any(part.ids is not None for part in parts)
        if ids is not None:
            ids = np.asarray(ids)
            if not np.issubdtype(ids.dtype, np.integer) or ids.shape != (x.shape[0],):
                raise SpreadcodeError(f"ids must be {x.shape[0]} integers, got "
                                      f"{ids.dtype} {ids.shape}")
            ids = ids.astype(np.int64)
        if parts and len(self) and has_ids != (ids is not None):
            raise SpreadcodeError("ids must be given for every add or for none: this index "
                                  f"{'has' if has_ids else 'has no'} explicit ids")
        codes = encode_codes(self.catalyzer, self.quantizer, x, beam, precision)
        if not len(self) and x.dtype.name in container.INPUT_DTYPES:
            self._input_dtype = x.dtype.name
        if parts and isinstance(parts[-1], MemoryPart):
            last = parts[-1]
            codes = np.concatenate([last.codes_bytes, codes])
            if ids is not None:
                ids = np.concatenate([last.ids, ids])
            parts = parts[:-1]
        self._replace_parts(parts + (MemoryPart(codes, ids),))

    def _replace_parts(self, parts):
        collection = self._collection
        self._collection = Collection(tuple(parts), collection.quantizer,
                                      collection.catalyzer_sha256,
                                      decode_memory=collection.decode_memory)

    @property
    def decode_memory(self):
        """Bytes of decoded codes that searches keep for later searches, per decoder use
        (the scan's decoded codes, and again the re-ranking's candidates), in this process
        and in each Dask worker process; None (the default): 1 GiB here
        (`spreadcode.search.DECODE_MEMORY`) and per worker
        (`spreadcode.distributed.WORKER_DECODED_BYTES`): 10.7M codes of 96 dimensions for a
        residual model's shortlist scan (int8, `spreadcode.search.int8_rows`), 2.8M re-ranked
        candidates (float32). The first codes up to the bound are
        kept, the rest decoded again by every search; 0 keeps nothing. Results never depend
        on it."""
        return self._collection.decode_memory

    @decode_memory.setter
    def decode_memory(self, value):
        self._collection = replace(self._collection, _lookup={},
                                   decode_memory=check_decode_memory(value))

    def reset(self):
        """Remove every code."""
        self._replace_parts(())

    def prepare_search(self, queries, *, k=10, radius=None, rerank=None, blend=None,
                       decode_all=False, hamming=False, precision="auto", progress=False):
        """`search` (or with ``radius``, `range_search`) prepared to run query batch by query
        batch (`spreadcode.search.PreparedSearch`), as ``spreadcode search`` runs it;
        ``progress``: a bar over the tasks of each batch when searching on Dask workers."""
        parallel = {"client": self._client, "progress": progress}
        if self.is_residual:
            return self._prepare_residual_search(queries, k, radius, rerank, blend, decode_all,
                                                 hamming, precision, parallel)
        from .residual import check_precision

        check_precision(precision)  # only a residual model decodes in bfloat16
        uses_decoder = self.decoder is not None and rerank != 0
        if (rerank or decode_all or blend is not None) and self.decoder is None:
            raise SpreadcodeError("rerank, blend and decode_all need an index with a decoder")
        if radius is not None:
            if rerank or decode_all:
                raise SpreadcodeError("a range search does not use the decoder")
            return search.prepare_scan(self._collection, self.catalyzer, queries,
                                       radius=radius, hamming=hamming, **parallel)
        if uses_decoder and hamming:
            raise SpreadcodeError("a Hamming search does not use the decoder (rerank=0)")
        if decode_all:
            return search.prepare_decoded(self._collection, self.decoder, queries, k=k,
                                          **parallel)
        if uses_decoder:
            return search.prepare_rerank(self._collection, self.catalyzer, self.decoder,
                                         queries, k=k, rerank=rerank, blend=blend, **parallel)
        return search.prepare_scan(self._collection, self.catalyzer, queries, k=k,
                                   hamming=hamming, **parallel)

    def _prepare_residual_search(self, queries, k, radius, rerank, blend, decode_all, hamming,
                                 precision, parallel):
        """`prepare_search` for a residual model, which decodes its own codes."""
        from .residual import refuse_residual

        for what, asked in (("a Hamming search", hamming),
                            ("a separate decoder", self.decoder is not None)):
            if asked:
                refuse_residual(self.catalyzer, what)
        return search.prepare_residual(self._collection, self.catalyzer, queries, k=k,
                                       radius=radius, rerank=rerank, blend=blend,
                                       decode_all=decode_all, precision=precision, **parallel)

    def search(self, queries, k=10, *, rerank=None, blend=None, decode_all=False,
               hamming=False, precision="auto"):
        """The k nearest codes of each query (nq, d), any real dtype: (distances float32
        (nq, k) ascending, ids int64 (nq, k)), ties to the lower id; k is capped at the
        number of codes (an empty index is an error).

        Compressed-domain distances (squared L2 between the catalyzed query and the unit
        reconstruction; with ``hamming``, sign codes only, bit counts). With a decoder the
        shortlist of ``rerank`` candidates (default max(10 k, 100); 0: no re-ranking) is
        re-ranked by the squared L2 between the raw query and the decoded candidates, plus
        ``blend`` (default: the decoder's) × the compressed distance; ``decode_all`` ranks
        every decoded code instead (no catalyzer needed). A residual model's index
        (`is_residual`) shortlists by its shortlist decoder (default
        `spreadcode.search.residual_rerank`: max(2 k, 50) candidates) and re-ranks by its full
        decoder plus ``blend`` (default: the model's ``rerank_blend``) × the shortlist
        distance (`spreadcode.search.prepare_residual`): squared L2 distances in input space.
        The first search decodes every code for its scan and the index keeps them, up to
        `decode_memory` (by default 1 GiB: 10.7M codes of 96 dimensions), until ``add``
        or ``reset``: later searches skip that work. Candidates decoded for re-ranking are
        kept the same way (as many bytes again at most): the full decoder decodes each
        kept code at most once per index, whatever the searches. ``precision``: a residual
        model's decoding arithmetic (`spreadcode.residual.ResidualCatalyzer.decode`: "auto"
        multiplies in bfloat16 where the device does so natively, "float32" everywhere).
        """
        result = self.prepare_search(queries, k=k, rerank=rerank, blend=blend,
                                     decode_all=decode_all, hamming=hamming,
                                     precision=precision).result()
        return result.distances, result.ids

    def range_search(self, queries, radius, *, hamming=False, precision="auto"):
        """Every code within ``radius`` (compressed-domain distance, see `search`; for a
        residual model, squared L2 in input space to the fully decoded vector) of each
        query (nq, d): (lims int64 (nq + 1,), distances float32, ids int64), query i's
        results at ``lims[i]:lims[i+1]`` sorted by (distance, id), faiss's convention;
        ``precision`` as in `search`."""
        result = self.prepare_search(queries, radius=radius, hamming=hamming,
                                     precision=precision).result()
        return result.lims, result.distances, result.ids

    def reconstruct(self, ids):
        """The vectors of codes ``ids`` int (m,) (SpreadcodeError for an id not in the index).

        With a decoder (a residual model has its own): its estimate of the input vectors,
        float32 (m, d). Without one: the
        quantizer's unit reconstruction in the catalyzer's output space, float32 (m, d_out)
        (the catalyzer has no inverse)."""
        ids = np.atleast_1d(np.asarray(ids))
        if not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 1:
            raise SpreadcodeError(f"ids must be a 1-D array of integers, got {ids.dtype} "
                                  f"{ids.shape}")
        codes = self._collection.codes_by_id(ids.astype(np.int64), check=True)
        if self.is_residual:
            return self.catalyzer.decode(codes)
        if self.decoder is not None:
            return self.decoder.decode(codes)
        return self.quantizer.reconstruct(codes)

    def save(self, path, *, store=None):
        """Write the codes (and ids, if explicit) to the .spc file ``path``, all-or-nothing.
        The catalyzer, which the file names by its hash, is saved into the model store
        (``store``, default: the index's) so that ``spreadcode search`` and `Index.load` find it."""
        from .catalyzer import save_catalyzer

        store = self._store if store is None else store
        sha, _ = save_catalyzer(self.catalyzer, self.catalyzer_meta, store=store)
        collection = self._collection
        with_ids = any(part.ids is not None for part in collection.parts)
        quantizer = collection.quantizer
        with container.SpcWriter(
            path, kind=quantizer.kind, d=quantizer.d, param=quantizer.param,
            bits=quantizer.bits, code_bytes=quantizer.code_bytes, input_dim=self.d,
            input_dtype=self._input_dtype, catalyzer_sha256=sha,
            metadata={"creator": f"spreadcode {__version__}"}, with_ids=with_ids,
        ) as writer:
            for index, part in enumerate(collection.parts):
                ids = collection.global_ids(index, np.arange(part.count)) if with_ids else None
                writer.append(np.asarray(part.codes_bytes), ids)


def check_decode_memory(value):
    """``value`` (`Index.decode_memory`) as an int >= 0, or None; SpreadcodeError else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise SpreadcodeError(f"decode_memory must be a number of bytes >= 0 or None, "
                              f"got {value!r}")
    return int(value)


def _catalyzer_sha256(model, meta):
    """SHA-256 (hex) of the model file the catalyzer would be saved as."""
    from .catalyzer import catalyzer_bytes

    return hashlib.sha256(catalyzer_bytes(model, meta)).hexdigest()
