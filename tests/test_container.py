"""The .spc container: layout per formats/spc.md, determinism, atomic writing, and a clear
error for every kind of damage."""
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from helpers import rehash_header
from spreadcode import container, lattice, signs
from spreadcode.errors import SpreadcodeError

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "formats" / "golden"
GOLDEN_NAMES = ["lattice-d24-r79", "lattice-d48-r135", "sign-d20-ids"]

CATALYZER = bytes(range(32))
LATTICE = dict(kind="lattice", d=24, param=79, bits=41, code_bytes=8)
WIDE_LATTICE = dict(kind="lattice", d=32, param=30, bits=129, code_bytes=24)
SIGN = dict(kind="sign", d=20, param=20, bits=20, code_bytes=3)


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


@pytest.mark.parametrize("overrides, message", [
    (dict(kind="pq"), "unknown code kind 'pq'"),
    (dict(code_bytes=16), "lattice codes of 41 bits take 8 bytes, not 16"),
    (dict(bits=129, code_bytes=16), "take 24 bytes, not 16"),
    (dict(kind="sign", d=20, param=20, bits=20, code_bytes=2), "take 3 bytes, not 2"),
    (dict(kind="sign", d=20, param=16, bits=20, code_bytes=3), "one bit per dimension"),
    (dict(d=0), "must be positive"),
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
        "bits per code": 41,
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
    assert (h.kind, h.d, h.param, h.bits, h.code_bytes, h.count) == (
        want["kind"], want["d"], want["param"], want["bits"], want["code_bytes"], want["count"])
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
