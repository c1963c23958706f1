"""Property-based fuzzing of the .spc reader: random mutations of valid files, with and
without recomputed checksums, go through `open_spc`, ``spreadcode info`` and search. The only
acceptable outcomes are a SpreadcodeError (one clean line from the CLI) or a correct result,
checked against an independent brute-force computation. Unmutated files, and files changed
only where the format allows it, must be read.

Bounded for CI by ``--fuzz-examples`` / $SPREADCODE_FUZZ_EXAMPLES (see conftest.py); the
test marked ``fuzz_long`` runs 30 times as many (``pytest -m fuzz_long``; left out by default).
"""
import hashlib
import itertools
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import reseal, run, tiny_catalyzer, tiny_meta
from spreadcode import container
from spreadcode.catalyzer import catalyze, save_catalyzer
from spreadcode.errors import SpreadcodeError
from spreadcode.quantizer import quantizer_from_spec
from spreadcode.sample import load_sample
from spreadcode.encode import encode_file
from spreadcode.index import Index

N_BASE, N_QUERY, K, RADIUS = 200, 4, 7, 0.9
CATALYZERS = {"lattice": {"kind": "lattice", "d": 24, "param": 79},
              "sign": {"kind": "sign", "d": 20, "param": 20},
              "product": {"kind": "product", "d": 20, "param": [[12, 6], [8, 16]]}}
# (name, offset, struct format) of the fixed header's integer fields (formats/spc.md).
FIELDS = [("version_major", 8, "<H"), ("version_minor", 10, "<H"), ("header_size", 12, "<I"),
          ("kind", 16, "<B"), ("input_dtype", 17, "<B"), ("reserved", 18, "<H"),
          ("d", 20, "<I"), ("param", 24, "<I"), ("bits", 28, "<I"), ("code_bytes", 32, "<I"),
          ("input_dim", 36, "<I"), ("flags", 40, "<I"), ("metadata_size", 44, "<I"),
          ("count", 48, "<Q"), ("payload_offset", 56, "<Q")]
# Fields whose changes the format tolerates: the file stays readable and searchable.
HARMLESS_FIELDS = {"version_minor", "input_dtype", "reserved", "input_dim"}
# Whole code settings (kind, d, param, bits, code_bytes) a header may be rewritten to.
SETTINGS = [(1, 24, 79, 64, 8), (2, 64, 64, 64, 8), (1, 8, 10, 14, 8), (2, 20, 20, 20, 3),
            (2, 24, 24, 24, 3), (1, 64, 100, 147, 24), (1, 1000, 1, 1, 8), (1, 3, 7, 1, 8),
            (2, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**29), (3, 20, 2, 33, 5), (3, 20, 1, 16, 2),
            (3, 20, 64, 33, 5)]
EDGES = [0, 1, 2, 3, 7, 8, 20, 24, 63, 64, 65, 79, 100, 191, 192, 193, 255, 256, 2**16 - 1,
         2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
_names = itertools.count()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A store with a lattice, a sign and a product catalyzer, and valid .spc files of each
    (the product ones with a block table, format 1.1): without ids, with ids (negative and
    beyond int32 among them), and empty; queries and their catalyzed forms for the oracle."""
    root = tmp_path_factory.mktemp("fuzz")
    store, base = root / "store", root / "base.npy"
    np.save(base, load_sample().base[:N_BASE])
    queries = load_sample().query[:N_QUERY]
    files, catalyzed = [], {}
    for seed, (name, spec) in enumerate(CATALYZERS.items()):
        model = tiny_catalyzer(spec["d"], seed)
        sha, _ = save_catalyzer(model, tiny_meta(model, spec), store=store)
        catalyzed[sha] = (spec, catalyze(model, queries))
        plain = root / f"{name}.spc"
        encode_file(base, plain, model=sha, store=store)
        spc = container.open_spc(plain)
        h = spc.header
        for suffix, ids, rows in (("ids", np.arange(N_BASE) * 7 - 600 + 2**40 * (
                np.arange(N_BASE) % 3 == 0), slice(None)), ("empty", None, slice(0, 0))):
            path = root / f"{name}-{suffix}.spc"
            with container.SpcWriter(path, kind=h.kind, d=h.d, param=h.param, bits=h.bits,
                                     code_bytes=h.code_bytes, input_dim=h.input_dim,
                                     input_dtype=h.input_dtype, catalyzer_sha256=sha,
                                     metadata={"source": "fuzz ✓", "nested": [[{"a": 1}]]},
                                     with_ids=ids is not None) as writer:
                writer.append(spc.codes_bytes[rows], None if ids is None else ids[rows])
        files += [plain.read_bytes(), (root / f"{name}-ids.spc").read_bytes(),
                  (root / f"{name}-empty.spc").read_bytes()]
    return {"root": root, "store": store, "files": files, "queries": queries,
            "catalyzed": catalyzed}


# ---- mutations: functions bytearray -> bytearray, and whether the format allows them ------

def with_metadata(data, metadata):
    """``data`` with its metadata replaced by ``metadata`` bytes (sizes and offsets moved)."""
    if len(data) < container.HEADER_SIZE:
        return data
    header_size = struct.unpack_from("<I", data, 12)[0]
    payload_offset = struct.unpack_from("<Q", data, 56)[0]
    if not container.HEADER_SIZE <= header_size <= payload_offset <= len(data):
        return data
    new_offset = -(-(header_size + len(metadata)) // 64) * 64
    out = bytearray(data[:header_size]) + metadata
    out += bytes(new_offset - len(out)) + data[payload_offset:]
    struct.pack_into("<I", out, 44, len(metadata))
    struct.pack_into("<Q", out, 56, new_offset)
    return out


def set_field(name, value):
    offset, fmt = next((o, f) for n, o, f in FIELDS if n == name)
    value %= 256 ** struct.calcsize(fmt)

    def mutate(data):
        if len(data) >= offset + struct.calcsize(fmt):
            struct.pack_into(fmt, data, offset, value)
        return data
    return mutate


def set_setting(setting):
    def mutate(data):
        for name, value in zip(("kind", "d", "param", "bits", "code_bytes"), setting):
            data = set_field(name, value)(data)
        return data
    return mutate


def flip(position, mask):
    def mutate(data):
        if data:
            data[position % len(data)] ^= mask
        return data
    return mutate


def overwrite_payload(position, chunk):
    def mutate(data):
        if len(data) > container.HEADER_SIZE:
            start = container.HEADER_SIZE + position % (len(data) - container.HEADER_SIZE)
            data[start:start + len(chunk)] = chunk[:len(data) - start]
        return data
    return mutate


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8)
valid_metadata = st.dictionaries(st.text(max_size=8), json_values, max_size=4).map(
    lambda obj: json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8"))
hostile_metadata = st.one_of(
    st.binary(max_size=40),
    st.integers(1, 3000).map(lambda n: b'{"a":' + b"[" * n + b"]" * n + b"}"),
    st.sampled_from([b'{"a":"\\ud800"}', b'{"a":NaN}', b'{"a":-Infinity}', b"[]", b"null",
                     b'{"a":1e999}', b'{"\\udfff":1}', b'{"a":"\\u0000"}', b"{}" * 2]),
    valid_metadata.map(lambda text: text[:-1]))

# (mutate, harmless): harmless mutations leave a file the format says must be read.
mutations = st.one_of(
    st.tuples(st.integers(0, 10**6), st.integers(1, 255)).map(lambda a: (flip(*a), False)),
    st.tuples(st.sampled_from([n for n, _, _ in FIELDS]),
              st.sampled_from(EDGES) | st.integers(0, 2**64 - 1)).map(
        lambda a: (set_field(*a), False)),
    st.tuples(st.sampled_from(sorted(HARMLESS_FIELDS)), st.integers(0, 2**16 - 1)).map(
        lambda a: (set_field(*a), a[0] != "input_dtype" or a[1] in range(1, 7))),
    st.sampled_from(SETTINGS).map(lambda s: (set_setting(s), False)),
    st.integers(0, 10**6).map(lambda n: (lambda data: data[:n % (len(data) + 1)], False)),
    st.binary(min_size=1, max_size=16).map(lambda tail: (lambda data: data + tail, False)),
    valid_metadata.map(lambda m: ((lambda data: with_metadata(data, m)), True)),
    hostile_metadata.map(lambda m: ((lambda data: with_metadata(data, m)), False)),
    st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=24)).map(
        lambda a: (overwrite_payload(*a), False)),
)
cases = st.tuples(st.integers(0, 3 * len(CATALYZERS) - 1), st.lists(mutations, max_size=3),
                  st.sampled_from(["none", "header", "both", "both"]))


# ---- the oracle -------------------------------------------------------------------------------

def expected_distances(corpus, header, codes_bytes):
    """Brute force (float64) distances (nq, count) from the catalyzed queries to every code,
    or None when no catalyzer of the corpus fits the header (search must then refuse)."""
    spec, queries = corpus["catalyzed"].get(header.catalyzer_sha256, (None, None))
    quantizer = quantizer_from_spec(header.kind, header.d, header.param)
    if spec is None or (spec["kind"], spec["d"], quantizer_from_spec(**spec).param) != (
            header.kind, header.d, header.param):
        return None
    points = quantizer.reconstruct(quantizer.codes_from_bytes(np.asarray(codes_bytes)))
    return 2.0 - 2.0 * queries.astype(np.float64) @ points.astype(np.float64).T


def check_search(corpus, path, harmless):
    """`Index.load` + search in k-NN and range mode: a SpreadcodeError, or exactly the right
    codes."""
    for radius in (None, RADIUS):
        try:
            index = Index.load(path, store=corpus["store"])
            if radius is None:
                distances, found = index.search(corpus["queries"], K)
            else:
                lims, distances, found = index.range_search(corpus["queries"], radius)
        except SpreadcodeError:
            assert not harmless or radius is None and container.read_header(path).count == 0
            continue
        spc = container.open_spc(path)
        assert spc.checksum_ok
        expected = expected_distances(corpus, spc.header, spc.codes_bytes)
        assert expected is not None, "searched with a catalyzer that does not fit the header"
        ids = np.arange(spc.count) if spc.ids is None else np.asarray(spc.ids)
        for row in range(N_QUERY):
            if radius is None:
                got_ids, got = found[row], distances[row]
                want = np.sort(expected[row])[:min(K, spc.count)]
            else:
                span = slice(lims[row], lims[row + 1])
                got_ids, got = found[span], distances[span]
                want = np.sort(expected[row][expected[row] <= radius + 1e-5])
                assert len(want) - np.sum(np.abs(want - radius) < 1e-5) <= len(got) <= len(want)
                want = want[:len(got)]
            np.testing.assert_allclose(got, want, atol=1e-5)
            assert np.all(np.diff(got) >= 0)
            for code_id, distance in zip(got_ids, got):
                assert np.any((ids == code_id) & (np.abs(expected[row] - distance) < 1e-5))


def check_info(corpus, path, harmless):
    """spreadcode info: rows and exit 0 for an intact file, one clean error line otherwise."""
    result = run("info", path, "--store", corpus["store"])
    assert "--debug" not in result.stderr and "Traceback" not in result.output, result.stderr
    if result.exit_code == 0:
        header = container.read_header(path)
        data = path.read_bytes()
        assert hashlib.sha256(data[header.payload_offset:]).hexdigest() == header.payload_sha256
        assert f"{'vectors:':<22}{header.count}\n" in result.stdout
    else:
        assert not harmless, result.stderr
        assert result.exit_code == 1 and result.stderr.startswith("spreadcode: error: ")
        assert len(result.stderr.splitlines()) == 1, result.stderr


def fuzz_once(corpus, case):
    index, applied, sealing = case
    data = bytearray(corpus["files"][index])
    for mutate, _ in applied:
        data = mutate(data)
    if sealing != "none":
        data = bytearray(reseal(data, payload=sealing == "both"))
    harmless = sealing == "both" and all(ok for _, ok in applied)
    path = corpus["root"] / f"case-{next(_names)}.spc"
    path.write_bytes(bytes(data))
    try:
        try:
            header = container.open_spc(path, verify=False).header
        except SpreadcodeError:
            assert not harmless
        else:
            assert path.stat().st_size == header.file_size
            quantizer = quantizer_from_spec(header.kind, header.d, header.param)
            assert (quantizer.bits, quantizer.code_bytes) == (header.bits, header.code_bytes)
            json.dumps(header.metadata, ensure_ascii=False).encode("utf-8")
        check_info(corpus, path, harmless)
        check_search(corpus, path, harmless)
    finally:
        path.unlink()


def fuzz(corpus, examples):
    @settings(max_examples=examples, deadline=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases)
    def property_holds(case):
        fuzz_once(corpus, case)

    property_holds()


def test_every_mutated_file_is_refused_cleanly_or_read_correctly(corpus, fuzz_examples):
    fuzz(corpus, fuzz_examples)


@pytest.mark.slow
@pytest.mark.fuzz_long
def test_fuzz_long_run(corpus, fuzz_examples):
    fuzz(corpus, 30 * fuzz_examples)


def test_unmutated_files_are_read(corpus):
    for index in range(len(corpus["files"])):
        fuzz_once(corpus, (index, [], "none"))
