"""The .spc container: layout per formats/spc.md, determinism, atomic writing, and a clear
error for every kind of damage."""
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers import forge_spc, rehash_header, reseal
from spreadcode import container, lattice, signs
from spreadcode.collection import open_collection
from spreadcode.errors import SpreadcodeError
from spreadcode.quantizer import ProductQuantizer

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "formats" / "golden"
GOLDEN_NAMES = ["lattice-d24-r79", "lattice-d48-r135", "product-4x12-r6", "sign-d20-ids"]

CATALYZER = bytes(range(32))
LATTICE = dict(kind="lattice", d=24, param=79, bits=64, code_bytes=8)
WIDE_LATTICE = dict(kind="lattice", d=64, param=100, bits=147, code_bytes=24)
SIGN = dict(kind="sign", d=20, param=20, bits=20, code_bytes=3)
PRODUCT = dict(kind="product", d=20, param=((12, 6), (8, 16)), bits=33, code_bytes=5)


def write_spc(path, codes, *, layout=LATTICE, ids=None, batch=4, metadata=None,
              catalyzer=CATALYZER):
    """Write ``codes`` uint8 (n, code_bytes) (and ``ids``) in batches of ``batch``."""
    with container.SpcWriter(path, **layout, input_dim=96, input_dtype="float32",
                             catalyzer_sha256=catalyzer, metadata=metadata,
                             with_ids=ids is not None) as writer:
        for start in range(0, len(codes), batch):
            writer.append(codes[start:start + batch],
                          None if ids is None else ids[start:start + batch])
    return path


def random_codes(n, code_bytes, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, code_bytes), dtype=np.uint8)


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", [LATTICE, WIDE_LATTICE, SIGN])
@pytest.mark.parametrize("with_ids", [False, True])
def test_round_trip_header_codes_and_ids(tmp_path, layout, with_ids):
    codes = random_codes(11, layout["code_bytes"])
    ids = np.arange(11, dtype=np.int64) * -7 + 2**40 if with_ids else None
    path = write_spc(tmp_path / "db.spc", codes, layout=layout, ids=ids,
                     metadata={"source": "base.fvecs", "créateur": "spreadcode 0.1.0"})
    spc = container.open_spc(path)
    h = spc.header
    assert (h.kind, h.d, h.param, h.bits, h.code_bytes) == tuple(layout.values())
    assert (h.version_major, h.version_minor, h.count, spc.count) == (1, 0, 11, 11)
    assert (h.input_dim, h.input_dtype, h.has_ids) == (96, "float32", with_ids)
    assert h.catalyzer_sha256 == CATALYZER.hex()
    assert h.metadata == {"source": "base.fvecs", "créateur": "spreadcode 0.1.0"}
    np.testing.assert_array_equal(spc.codes_bytes, codes)
    assert spc.codes_bytes.dtype == np.uint8 and not spc.codes_bytes.flags.writeable
    if with_ids:
        assert spc.ids.dtype == np.int64
        np.testing.assert_array_equal(spc.ids, ids)
    else:
        assert spc.ids is None
    assert spc.checksum_ok


def test_byte_layout_follows_the_spec(tmp_path):
    codes = random_codes(5, 3)
    ids = np.array([3, 1, 4, 1, 5], dtype=np.int64)
    metadata = {"b": 1, "a": [1.5, "x"]}
    data = write_spc(tmp_path / "s.spc", codes, layout=SIGN, ids=ids, metadata=metadata,
                     catalyzer=None).read_bytes()
    meta_json = b'{"a":[1.5,"x"],"b":1}'
    fields = struct.unpack_from("<8sHHIBBH7IQQ32s32s32s32s", data)
    assert fields[:16] == (b"SPRDCODE", 1, 0, 192, 2, 1, 0, 20, 20, 20, 3, 96, 1,
                           len(meta_json), 5, 256)
    assert fields[16] == bytes(32) and fields[19] == bytes(32)
    assert data[192:192 + len(meta_json)] == meta_json
    assert data[192 + len(meta_json):256] == bytes(256 - 192 - len(meta_json))
    assert data[256:271] == codes.tobytes()
    assert data[271:272] == b"\0"  # ids start 8-byte aligned
    assert data[272:] == ids.astype("<i8").tobytes()
    assert fields[17] == hashlib.sha256(data[256:]).digest()
    prefix = bytearray(data[:256])
    prefix[128:160] = bytes(32)
    assert fields[18] == hashlib.sha256(prefix).digest()


def test_writing_is_deterministic_whatever_the_batching(tmp_path):
    codes = random_codes(50, 8, seed=3)
    ids = np.arange(50) * 3
    meta = {"source": "x.fvecs", "creator": "spreadcode"}
    first = write_spc(tmp_path / "a.spc", codes, ids=ids, batch=7, metadata=meta)
    meta_reordered = {"creator": "spreadcode", "source": "x.fvecs"}
    second = write_spc(tmp_path / "b.spc", codes, ids=ids, batch=50, metadata=meta_reordered)
    assert first.read_bytes() == second.read_bytes()


def test_empty_file_is_valid(tmp_path):
    spc = container.open_spc(write_spc(tmp_path / "e.spc", random_codes(0, 8), ids=np.zeros(0)))
    assert spc.count == 0
    assert spc.codes_bytes.shape == (0, 8) and spc.ids.shape == (0,)
    assert spc.checksum_ok


@pytest.mark.parametrize("interrupt", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("with_ids", [False, True])
def test_interrupted_writer_leaves_nothing(tmp_path, interrupt, with_ids):
    with pytest.raises(type(interrupt)):
        with container.SpcWriter(tmp_path / "db.spc", **LATTICE, input_dim=4,
                                 input_dtype="float32", with_ids=with_ids) as writer:
            writer.append(random_codes(3, 8), np.arange(3) if with_ids else None)
            raise interrupt
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_file(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(4, 8))
    before = path.read_bytes()
    with pytest.raises(SpreadcodeError, match="codes must be uint8"):
        with container.SpcWriter(path, **LATTICE, input_dim=4, input_dtype="float32") as w:
            w.append(random_codes(2, 8))
            w.append(np.zeros((2, 8), np.int64))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["db.spc"]


def test_truncated_file(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(10, 8))
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(SpreadcodeError, match=(
            rf"^{path}: truncated: header says 10 codes of 8 bytes \(80 bytes of payload\), "
            r"file has 79 bytes of payload$")):
        container.open_spc(path, verify=False)
    for size in (0, 5, 10, 100, 200):
        path.write_bytes(data[:size])
        with pytest.raises(SpreadcodeError, match="empty file|truncated"):
            container.open_spc(path)


def test_truncated_ids_and_trailing_bytes(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(3, 8), ids=np.arange(3))
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(SpreadcodeError, match="truncated: header says 3 codes of 8 bytes plus "
                                              "int64 ids"):
        container.open_spc(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(SpreadcodeError, match="unexpected trailing bytes"):
        container.open_spc(path)


def test_flipped_payload_byte_is_detected(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(10, 8), ids=np.arange(10))
    size = path.stat().st_size
    for offset in (256, 256 + 79, size - 1):
        fresh = write_spc(tmp_path / f"{offset}.spc", random_codes(10, 8), ids=np.arange(10))
        flip_byte(fresh, offset)
        with pytest.raises(SpreadcodeError, match=f"^{fresh}: payload checksum mismatch"):
            container.open_spc(fresh)
        spc = container.open_spc(fresh, verify=False)
        assert not spc.checksum_ok
        assert container.describe(spc)["checksum"] == "MISMATCH (file corrupted)"
        with pytest.raises(SpreadcodeError, match="payload checksum mismatch"):
            spc.verify()


def test_every_flipped_header_byte_is_detected(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(3, 8), metadata={"source": "x"})
    data = path.read_bytes()
    for offset in range(256):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(SpreadcodeError, match=f"^{path}: "):
            container.open_spc(path, verify=False)


@pytest.mark.parametrize("offset, message", [
    (0, "not a .spc file"),
    (20, "header checksum mismatch"),  # d
    (28, "header checksum mismatch"),  # bits
    (48, "header checksum mismatch"),  # count
    (70, "header checksum mismatch"),  # catalyzer
    (100, "header checksum mismatch"),  # payload sha256
    (170, "header checksum mismatch"),  # reserved
    (195, "header checksum mismatch"),  # metadata
    (250, "header checksum mismatch"),  # padding
    (56, "corrupted or truncated header"),  # payload offset
])
def test_header_damage_messages(tmp_path, offset, message):
    path = write_spc(tmp_path / "db.spc", random_codes(3, 8), metadata={"source": "x"})
    flip_byte(path, offset)
    with pytest.raises(SpreadcodeError, match=message):
        container.open_spc(path, verify=False)


# formats/spc.md, "Reading and validation": the checks a reader makes, in order, and the
# message of each. A file made to fail check N and every later one must fail with check N.
READER_CHECKS = [
    (1, "not a .spc file"),
    (2, "file uses .spc format version 2.0"),
    (3, "corrupted or truncated header"),
    (4, "header checksum mismatch"),
    (5, r"lattice S\(24, r²=79\) codes have 64 bits in 8 bytes, not 41 bits in 8 bytes"),
    (6, "metadata is not valid JSON"),
    (7, "unexpected trailing bytes"),
    (8, "payload checksum mismatch"),
]


def failing_from(path, step):
    """A .spc file at ``path`` that breaks reader check ``step`` and every later one."""
    forge_spc(path, kind=1, d=24, param=79, bits=41 if step <= 5 else 64, code_bytes=8,
              count=3, codes=random_codes(3, 8).tobytes(), catalyzer=CATALYZER,
              metadata=b'{"a":NaN}' if step <= 6 else b"{}")
    data = bytearray(path.read_bytes())
    if step <= 7:
        data += b"\0"  # trailing byte: the length is wrong and so is the payload checksum
    if step == 8:
        data[-1] ^= 1
    if step > 4:
        data = bytearray(reseal(data, payload=False))
    else:
        data[170] ^= 1  # a reserved header byte: only the header checksum notices
    if step <= 3:
        struct.pack_into("<Q", data, 56, 200)  # payload offset not a multiple of 64
    if step <= 2:
        struct.pack_into("<H", data, 8, 2)
    if step <= 1:
        data[:8] = b"NOTSPC!!"
    path.write_bytes(bytes(data))
    return path


def test_reader_checks_are_those_of_the_spec():
    spec = (Path(__file__).resolve().parents[1] / "formats" / "spc.md").read_text()
    checklist = spec[spec.index("## Reading and validation"):spec.index("**Why SHA-256.**")]
    steps = [int(m.group(1)) for m in re.finditer(r"^(\d+)\. ", checklist, re.MULTILINE)]
    assert steps == [n for n, _ in READER_CHECKS]


@pytest.mark.parametrize("step, message", READER_CHECKS)
def test_reader_makes_its_checks_in_the_order_of_the_spec(tmp_path, step, message):
    path = failing_from(tmp_path / "bad.spc", step)
    with pytest.raises(SpreadcodeError, match=f"^{path}: {message}"):
        container.open_spc(path)
    if step == 8:
        assert not container.open_spc(path, verify=False).checksum_ok
    else:
        with pytest.raises(SpreadcodeError, match=f"^{path}: {message}"):
            container.read_header(path)


@pytest.mark.parametrize("fields, message", [
    (dict(kind=4), "unknown code kind 4"),
    (dict(kind=1, d=65, param=79), "lattice dimension d=65 is above the limit of 64"),
    (dict(kind=1, d=24, param=16384), "r2=16384 is too large"),
    (dict(kind=1, d=3, param=7), "S\\(d=3, r2=7\\) is empty"),
    (dict(kind=1, d=16, param=800), "more than 262144 atoms"),
    (dict(kind=1, d=1000, param=1, bits=1), "d=1000 is above the limit of 64"),
    (dict(kind=1, d=24, param=79, bits=64, code_bytes=16), "not 64 bits in 16 bytes"),
    (dict(kind=2, d=2**32 - 1, param=2**32 - 1, bits=2**32 - 1, code_bytes=2**29),
     "sign code dimension d=4294967295 is above the limit"),
    (dict(kind=2, d=20, param=21, bits=20, code_bytes=3), "param must equal d=20"),
    (dict(kind=2, d=20, param=20, bits=21, code_bytes=3), "not 21 bits in 3 bytes"),
])
def test_code_parameters_are_checked_against_the_codec(tmp_path, fields, message):
    """Check 5: kind, d, param within the codec's limits, bits and code size exactly."""
    fields = {"d": 24, "param": 79, "bits": 64, "code_bytes": 8, **fields}
    path = forge_spc(tmp_path / "forged.spc", **fields)
    with pytest.raises(SpreadcodeError, match=f"^{path}: .*{message}"):
        container.read_header(path)


@pytest.mark.parametrize("metadata, message", [
    (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than 64 levels"),
    (b'{"a":' + b"[" * 64 + b"]" * 64 + b"}", "nested more than 64 levels"),
    (b'{"a":"\\ud800"}', "unpaired surrogate"),
    (b'{"a":Infinity}', "Infinity is not a JSON number"),
    (b'{"a":"\xff"}', "not UTF-8"),
    (b'{"a":1', "Expecting"),
    (b'{"a":1' + b"1" * 5000 + b"}", "digits"),
    (b"[]", "a JSON object"),
])
def test_metadata_must_be_a_strict_json_object(tmp_path, metadata, message):
    """Check 6: UTF-8 JSON object, no NaN/Infinity, no unpaired surrogate, nesting <= 64."""
    path = forge_spc(tmp_path / "forged.spc", kind=1, d=24, param=79, bits=64, code_bytes=8,
                     metadata=metadata)
    with pytest.raises(SpreadcodeError, match=f"^{path}: metadata is not .*{message}"):
        container.read_header(path)


def test_metadata_nested_64_deep_and_any_unicode_is_read(tmp_path):
    metadata = b'{"a":' + b"[" * 63 + b"]" * 63 + b',"b":"\\ud83d\\ude00 \xc3\xa9"}'
    path = forge_spc(tmp_path / "ok.spc", kind=1, d=24, param=79, bits=64, code_bytes=8,
                     metadata=metadata)
    assert container.read_header(path).metadata["b"] == "\U0001F600 é"


def test_wrong_magic_and_not_a_file(tmp_path):
    (tmp_path / "x.spc").write_bytes(b"\x93NUMPY" + bytes(300))
    with pytest.raises(SpreadcodeError, match=r"not a .spc file \(bad magic bytes\)"):
        container.open_spc(tmp_path / "x.spc")
    with pytest.raises(SpreadcodeError, match="no such file"):
        container.open_spc(tmp_path / "missing.spc")


def test_newer_major_version_is_refused_clearly(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(3, 8))
    data = bytearray(path.read_bytes())
    struct.pack_into("<HH", data, 8, 2, 1)
    path.write_bytes(bytes(data))
    rehash_header(path)
    with pytest.raises(SpreadcodeError, match=(
            rf"^{path}: file uses .spc format version 2.1; this spreadcode reads up to 1.x "
            "— upgrade spreadcode$")):
        container.open_spc(path)


def test_newer_minor_version_is_read(tmp_path):
    codes = random_codes(3, 8)
    path = write_spc(tmp_path / "db.spc", codes)
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 10, 7)
    data[170] = 0xAB  # a newer minor may use the reserved bytes
    path.write_bytes(bytes(data))
    rehash_header(path)
    spc = container.open_spc(path)
    assert (spc.header.version_major, spc.header.version_minor) == (1, 7)
    np.testing.assert_array_equal(spc.codes_bytes, codes)


def nested(depth):
    """A JSON value nested ``depth`` lists deep."""
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("overrides, message", [
    (dict(kind="pq"), "unknown code kind 'pq'"),
    (dict(code_bytes=16), "lattice S\\(24, r²=79\\) codes have 64 bits in 8 bytes, not 64 bits in "
                          "16 bytes"),
    (dict(bits=129, code_bytes=16), "have 64 bits in 8 bytes, not 129 bits in 16 bytes"),
    (dict(kind="sign", d=20, param=20, bits=20, code_bytes=2),
     "sign bits, d=20 codes have 20 bits in 3 bytes, not 20 bits in 2 bytes"),
    (dict(kind="sign", d=20, param=16, bits=20, code_bytes=3), "param must equal d=20"),
    (dict(kind="sign", d=2**21, param=2**21, bits=2**21, code_bytes=2**18),
     "above the limit of 1048576"),
    (dict(d=0), "d must be >= 1"),
    (dict(d=65), "dimension d=65 is above the limit of 64"),
    (dict(param=100_000), "r2=100000 is too large"),
    (dict(metadata={"x": "\ud800"}), "metadata is not"),
    (dict(metadata={"x": nested(70)}), "nested more than 64 levels"),
    (dict(d=24.0), r"d must be an integer in \[0, 2\^32\), got 24.0"),
    (dict(input_dim=2**32), "input_dim must be an integer"),
    (dict(input_dtype="complex64"), "unsupported input dtype"),
    (dict(input_dim=0), "input dimension must be positive"),
    (dict(catalyzer_sha256="abc"), "64 hex digits"),
    (dict(catalyzer_sha256=b"short"), "32 bytes"),
    (dict(metadata={"x": float("nan")}), "not JSON-serialisable"),
    (dict(metadata={"x": object()}), "not JSON-serialisable"),
])
def test_writer_refuses_bad_arguments(tmp_path, overrides, message):
    args = dict(LATTICE, input_dim=96, input_dtype="float32", catalyzer_sha256=None)
    args.update(overrides)
    with pytest.raises(SpreadcodeError, match=message):
        container.SpcWriter(tmp_path / "db.spc", **args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("with_ids, codes, ids, message", [
    (False, np.zeros((2, 7), np.uint8), None, r"codes must be uint8 \(b, 8\)"),
    (False, np.zeros(8, np.uint8), None, "codes must be uint8"),
    (False, np.zeros((2, 8), np.uint8), np.arange(2), "with_ids=True"),
    (True, np.zeros((2, 8), np.uint8), None, "with_ids=True"),
    (True, np.zeros((2, 8), np.uint8), np.arange(3), "ids must be 2 int64 values"),
    (True, np.zeros((2, 8), np.uint8), np.ones(2), "ids must be 2 int64 values"),
    (True, np.zeros((2, 8), np.uint8), np.ones(2, np.uint64), "ids must be 2 int64 values"),
])
def test_append_refuses_bad_batches(tmp_path, with_ids, codes, ids, message):
    with pytest.raises(SpreadcodeError, match=message):
        with container.SpcWriter(tmp_path / "db.spc", **LATTICE, input_dim=4,
                                 input_dtype="float32", with_ids=with_ids) as writer:
            writer.append(codes, ids)
    assert list(tmp_path.iterdir()) == []


def test_append_outside_with_block(tmp_path):
    writer = container.SpcWriter(tmp_path / "db.spc", **LATTICE, input_dim=4,
                                 input_dtype="float32")
    with pytest.raises(SpreadcodeError, match="outside its `with` block"):
        writer.append(random_codes(1, 8))


def test_catalyzer_given_as_hex_and_absent(tmp_path):
    hex_sha = hashlib.sha256(b"model").hexdigest()
    spc = container.open_spc(write_spc(tmp_path / "a.spc", random_codes(2, 8),
                                       catalyzer=hex_sha))
    assert spc.header.catalyzer_sha256 == hex_sha
    spc = container.open_spc(write_spc(tmp_path / "b.spc", random_codes(2, 8), catalyzer=None))
    assert spc.header.catalyzer_sha256 is None


def test_describe_summarises_the_file(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(6, 8), ids=np.arange(6),
                     metadata={"source": "base.fvecs"})
    info = container.describe(container.open_spc(path, verify=False))
    assert info == {
        "file": str(path),
        "format": ".spc 1.0",
        "code": "lattice S(24, r²=79)",
        "bits per code": 64,
        "bytes per code": 8,
        "vectors": 6,
        "ids": "int64",
        "input": "96 x float32",
        "compression": "48.0x",
        "catalyzer sha256": CATALYZER.hex(),
        "metadata": '{"source": "base.fvecs"}',
        "file size": path.stat().st_size,
        "payload sha256": hashlib.sha256(path.read_bytes()[256:]).hexdigest(),
        "checksum": "ok",
    }


def test_metadata_must_be_a_json_object(tmp_path):
    path = write_spc(tmp_path / "db.spc", random_codes(1, 8), metadata={"k": "v"})
    data = path.read_bytes().replace(b'{"k":"v"}', b'["k","v"]')
    path.write_bytes(data)
    rehash_header(path)
    with pytest.raises(SpreadcodeError, match="metadata is not a JSON object"):
        container.open_spc(path)


def test_golden_files_are_all_tested():
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.spc")) == GOLDEN_NAMES


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_file_decodes_to_its_expected_content(name):
    expected = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    spc = container.open_spc(GOLDEN_DIR / f"{name}.spc")
    h = spc.header
    want = expected["header"]
    assert [h.version_major, h.version_minor] == want["version"]
    param = tuple(map(tuple, want["param"])) if h.kind == "product" else want["param"]
    assert (h.kind, h.d, h.param, h.bits, h.code_bytes, h.count) == (
        want["kind"], want["d"], param, want["bits"], want["code_bytes"], want["count"])
    assert (h.input_dim, h.input_dtype, h.has_ids) == (
        want["input_dim"], want["input_dtype"], want["has_ids"])
    assert (h.catalyzer_sha256, h.metadata) == (want["catalyzer_sha256"], want["metadata"])
    if expected["ids"] is None:
        assert spc.ids is None
    else:
        np.testing.assert_array_equal(spc.ids, expected["ids"])
    if h.kind == "lattice":
        # the spec's layout: each code is one little-endian integer of code_bytes bytes
        values = [int.from_bytes(row.tobytes(), "little") for row in spc.codes_bytes]
        assert values == [int(v) for v in expected["codes"]]
        words = np.ascontiguousarray(spc.codes_bytes).view("<u8")
        points = lattice.decode(words[:, 0] if words.shape[1] == 1 else words, h.d, h.param)
        np.testing.assert_array_equal(points, expected["points"])
        assert ((points.astype(np.int64) ** 2).sum(axis=1) == h.param).all()
    elif h.kind == "product":
        # the spec's layout: block m's rank, little-endian in ceil(bits_m / 8) bytes, block 0 first
        widths = [-(-lattice.bits(d, r2) // 8) for d, r2 in h.param]
        starts = np.cumsum([0] + widths)
        ranks = [[str(int.from_bytes(row[a:b].tobytes(), "little")) for a, b in
                  zip(starts[:-1], starts[1:])] for row in spc.codes_bytes]
        assert ranks == expected["codes"]
        points = [lattice.decode(np.array([int(r[m]) for r in ranks], np.uint64), d, r2)
                  for m, (d, r2) in enumerate(h.param)]
        np.testing.assert_array_equal(np.concatenate(points, axis=1), expected["points"])
        for z, (_, r2) in zip(points, h.param):
            assert ((z.astype(np.int64) ** 2).sum(axis=1) == r2).all()
    else:
        s = signs.unpack(np.ascontiguousarray(spc.codes_bytes), h.d)
        np.testing.assert_array_equal(s, expected["signs"])


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_writer_reproduces_golden_files_byte_for_byte(tmp_path, name):
    golden = container.open_spc(GOLDEN_DIR / f"{name}.spc")
    h = golden.header
    path = tmp_path / "copy.spc"
    with container.SpcWriter(path, kind=h.kind, d=h.d, param=h.param, bits=h.bits,
                             code_bytes=h.code_bytes, input_dim=h.input_dim,
                             input_dtype=h.input_dtype,
                             catalyzer_sha256=h.catalyzer_sha256, metadata=h.metadata,
                             with_ids=h.has_ids) as writer:
        writer.append(golden.codes_bytes, golden.ids)
    assert path.read_bytes() == (GOLDEN_DIR / f"{name}.spc").read_bytes()


# ---- product codes (kind 3): the block table -------------------------------------------------

@pytest.mark.parametrize("with_ids", [False, True])
def test_product_round_trip_and_block_table_layout(tmp_path, with_ids):
    codes = ProductQuantizer(PRODUCT["param"]).quantize(
        np.random.default_rng(5).standard_normal((9, 20)).astype(np.float32))
    ids = np.arange(9, dtype=np.int64) * 3 - 4 if with_ids else None
    path = write_spc(tmp_path / "p.spc", codes, layout=PRODUCT, ids=ids, metadata={"a": 1})
    spc = container.open_spc(path)
    h = spc.header
    assert (h.kind, h.d, h.param, h.bits, h.code_bytes) == tuple(PRODUCT.values())
    assert (h.version_major, h.version_minor, h.header_size, h.count) == (1, 1, 208, 9)
    np.testing.assert_array_equal(spc.codes_bytes, codes)
    np.testing.assert_array_equal(spc.ids if with_ids else np.zeros(0), ids if with_ids else [])
    data = path.read_bytes()
    fields = container.HEADER.unpack_from(data)
    assert fields[1:4] == (1, 1, 208) and fields[4] == 3
    assert fields[7:11] == (20, 2, 33, 5)  # d, param = M, bits, code_bytes
    assert data[192:208] == struct.pack("<4I", 12, 6, 8, 16)
    assert data[208:215] == b'{"a":1}' and fields[15] == 256
    prefix = bytearray(data[:256])
    prefix[128:160] = bytes(32)
    assert fields[18] == hashlib.sha256(prefix).digest()  # the table is covered
    assert container.describe(spc)["format"] == ".spc 1.1"
    assert container.describe(spc)["code"] == "product of 2 lattices S(12, r²=6)+S(8, r²=16)"


def test_lattice_and_sign_files_stay_version_1_0(tmp_path):
    for name, layout in (("l", LATTICE), ("s", SIGN)):
        h = container.open_spc(write_spc(tmp_path / f"{name}.spc", random_codes(2, layout[
            "code_bytes"]), layout=layout)).header
        assert (h.version_minor, h.header_size) == (0, 192)


def test_flipped_block_table_byte_is_detected(tmp_path):
    path = write_spc(tmp_path / "p.spc", random_codes(3, 5), layout=PRODUCT)
    for offset in range(192, 208):
        fresh = write_spc(tmp_path / f"{offset}.spc", random_codes(3, 5), layout=PRODUCT)
        flip_byte(fresh, offset)
        with pytest.raises(SpreadcodeError, match=f"^{fresh}: header checksum mismatch"):
            container.read_header(fresh)
    assert container.read_header(path).param == PRODUCT["param"]


# Check 5 for product codes, in the order of formats/spc.md: a file failing rule N and every
# later one fails with rule N.
PRODUCT_CHECKS = [
    ("blocks", r"product code of 0 blocks \(param\): expected 1 to 64"),
    ("header_size", r"product code of 2 blocks needs header_size = 192 \+ 8 × 2 = 208, got 216"),
    ("block", r"product block 1: S\(d=3, r2=7\) is empty: 7 is not a sum of 3 squares"),
    ("d", r"product quantizer d must be the sum of its blocks' dimensions, 20, got 21"),
    ("bits", r"product of 2 lattices S\(12, r²=6\)\+S\(8, r²=16\) codes have 33 bits in 5 "
             r"bytes, not 34 bits in 5 bytes"),
]


def product_failing_from(path, rule):
    """A product .spc file at ``path`` that breaks check-5 rule ``rule`` and every later one."""
    step = [name for name, _ in PRODUCT_CHECKS].index(rule)
    blocks = [(12, 6), (3, 7) if step <= 2 else (8, 16)]
    return forge_spc(path, kind=3, d=21 if step <= 3 else 20, param=0 if step == 0 else 2,
                     bits=34, code_bytes=5, blocks=blocks, header_size=216 if step <= 1 else None,
                     count=1, codes=bytes(5))


@pytest.mark.parametrize("rule, message", PRODUCT_CHECKS)
def test_product_parameters_are_checked_in_the_order_of_the_spec(tmp_path, rule, message):
    path = product_failing_from(tmp_path / "bad.spc", rule)
    with pytest.raises(SpreadcodeError, match=f"^{path}: {message}$"):
        container.read_header(path)


def test_product_checks_are_those_of_the_spec():
    spec = (Path(__file__).resolve().parents[1] / "formats" / "spc.md").read_text()
    step5 = spec[spec.index("\n5. check the code parameters"):spec.index("\n6. check the metadata")]
    rules = step5[step5.index("for product codes"):]
    positions = [rules.index(text) for text in
                 ("1 ≤ M ≤ 64", "`header_size` = 192 + 8 × M", "each block", "`d` =", "`bits` =")]
    assert positions == sorted(positions)


@pytest.mark.parametrize("blocks, fields, message", [
    ([(12, 6)] * 65, dict(param=65), "product code of 65 blocks"),
    ([(64, 100)], dict(d=64), r"product block 0: S\(d=64, r2=100\) needs 147-bit codes, above "
                              "the 64-bit limit of a product block"),
    ([(65, 1)], dict(d=65), "product block 0: lattice dimension d=65 is above the limit of 64"),
    ([(12, 0)], dict(d=12), "product block 0: r2 must be >= 1"),
    ([(12, 6), (8, 16)], dict(code_bytes=6), "codes have 33 bits in 5 bytes, not 34 bits in 6"),
])
def test_product_block_table_is_checked_against_the_codec(tmp_path, blocks, fields, message):
    fields = {"d": 20, "param": len(blocks), "bits": 34, "code_bytes": 5, **fields}
    path = forge_spc(tmp_path / "forged.spc", kind=3, blocks=blocks, **fields)
    with pytest.raises(SpreadcodeError, match=f"^{path}: .*{message}"):
        container.read_header(path)


@pytest.mark.parametrize("overrides, message", [
    (dict(param=()), "product blocks must be a list of 1 to 64"),
    (dict(param=((12, 6),) * 65), "product blocks must be a list of 1 to 64"),
    (dict(param=5), "product blocks must be a list of 1 to 64"),
    (dict(param=((12, 6), (8,))), r"product block 1 must be a \(d, r2\) pair"),
    (dict(param=((12, 6), (8, 16.0))), "product block 1: r2 must be an integer"),
    (dict(param=((12, 6), (64, 100))), "above the 64-bit limit of a product block"),
    (dict(d=21), "d must be the sum of its blocks' dimensions, 20, got 21"),
    (dict(bits=32), "codes have 33 bits in 5 bytes, not 32 bits in 5 bytes"),
])
def test_writer_refuses_bad_product_arguments(tmp_path, overrides, message):
    args = dict(PRODUCT, input_dim=96, input_dtype="float32", **overrides)
    with pytest.raises(SpreadcodeError, match=message):
        container.SpcWriter(tmp_path / "db.spc", **args)
    assert list(tmp_path.iterdir()) == []


def test_using_product_codes_checks_every_block_rank(tmp_path):
    """A file that passes the header checks but holds a rank >= |S(d_m, r2_m)|."""
    codes = bytearray(ProductQuantizer(PRODUCT["param"]).join_block_codes(
        [np.array([5, 0], np.uint64), np.array([1, lattice.count(8, 16) - 1], np.uint64)]))
    codes[9] = 0xFF  # the high byte of row 1's block 1: above count
    path = forge_spc(tmp_path / "bad.spc", kind=3, d=20, param=2, bits=33, code_bytes=5,
                     blocks=PRODUCT["param"], count=2, codes=bytes(codes))
    collection = open_collection([path])
    with pytest.raises(SpreadcodeError, match=(
            rf"^{path}: codes block 1 row 1 is not a valid code of S\(d=8, r2=16\): codes "
            rf"must be below count = {lattice.count(8, 16)}$")):
        collection.codes(0)
