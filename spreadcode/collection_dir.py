"""Collection directories: .spc shards and the manifest that lists them.

Spec: ``formats/collection.md``. A directory ``DIR/`` holds shards ``shard-00000.spc``, ...
and ``manifest.json``; the manifest alone says which shards belong to the collection (any
other file, e.g. a shard of an interrupted ``add``, is ignored), and it is replaced
atomically only after every new shard is complete. Every shard stores its ids. This module
reads, validates and writes manifests and opens the shards; no torch (encoding is
`spreadcode.encode.encode_collection` / `add_to_collection`).
"""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import container
from .errors import SpreadcodeError
from .fileio import atomic_output, canonical_json, load_json
from .quantizer import QuantizerSpec, metadata_error

FORMAT = "spreadcode-collection"
VERSION = 1
MANIFEST = "manifest.json"
INT64 = np.iinfo(np.int64)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.spc")


def shard_name(number):
    """The file name of shard ``number``: ``shard-00000.spc``, ..."""
    return f"shard-{number:05d}.spc"


@dataclass(frozen=True)
class ShardEntry:
    """One shard in the manifest: ``file`` (a name inside the directory), ``count`` codes,
    ``first_id`` / ``last_id`` the smallest and largest id (int, None when the shard is
    empty; ids are ``first_id``, ``first_id + 1``, ... unless ``explicit_ids``), the shard's
    ``payload_sha256`` (hex)."""

    file: str
    count: int
    first_id: int | None
    last_id: int | None
    explicit_ids: bool
    payload_sha256: str

    def to_json(self):
        """The manifest's JSON object of this shard."""
        return {"file": self.file, "count": self.count, "first_id": self.first_id,
                "last_id": self.last_id, "explicit_ids": self.explicit_ids,
                "payload_sha256": self.payload_sha256}

    @classmethod
    def from_json(cls, value, where, field):
        """The entry of a manifest's JSON object; SpreadcodeError naming ``field``."""
        if not isinstance(value, dict):
            raise metadata_error(where, field, "not an object")
        keys = {"file", "count", "first_id", "last_id", "explicit_ids", "payload_sha256"}
        if set(value) != keys:
            raise metadata_error(where, field, f"keys {sorted(value)}, expected "
                                               f"{', '.join(sorted(keys))}")
        name, count = value["file"], value["count"]
        if not isinstance(name, str) or not _FILE.fullmatch(name):
            raise metadata_error(where, f"{field}.file", f"{name!r} is not a .spc file name "
                                 "inside the directory")
        if not _is_int(count) or count < 0:
            raise metadata_error(where, f"{field}.count", f"{count!r} is not a count")
        for key in ("first_id", "last_id"):
            if value[key] is not None and not (_is_int(value[key])
                                               and INT64.min <= value[key] <= INT64.max):
                raise metadata_error(where, f"{field}.{key}", f"{value[key]!r} is not an int64 "
                                     "id or null")
        first, last, explicit = value["first_id"], value["last_id"], value["explicit_ids"]
        if not isinstance(explicit, bool):
            raise metadata_error(where, f"{field}.explicit_ids", "not true or false")
        if count == 0:
            ok = last is None and (explicit or first is not None)
        elif explicit:
            ok = first is not None and last is not None and first <= last
        else:
            ok = first is not None and last == first + count - 1
        if not ok:
            raise metadata_error(where, f"{field}.last_id",
                                 f"ids {first!r}..{last!r} do not fit {count} "
                                 f"{'explicit' if explicit else 'consecutive'} ids")
        sha = value["payload_sha256"]
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise metadata_error(where, f"{field}.payload_sha256", "not 64 lowercase hex digits")
        return cls(name, count, first, last, explicit, sha)


@dataclass(frozen=True)
class Manifest:
    """A collection's manifest: the ``catalyzer_sha256`` (hex) and ``code``
    (`QuantizerSpec`) of every shard, the catalyzer's ``input_dim``, the default
    ``shard_size`` of later additions, and the ``shards`` (`ShardEntry`, in id order of
    writing: the collection's positions run through them in this order)."""

    catalyzer_sha256: str
    code: QuantizerSpec
    input_dim: int
    shard_size: int
    shards: tuple = ()

    @property
    def count(self):
        """Codes in the collection."""
        return sum(shard.count for shard in self.shards)

    @property
    def next_id(self):
        """The first id of consecutive ids added now: one past the largest id (0 when
        there is none)."""
        ids = [shard.last_id for shard in self.shards if shard.last_id is not None]
        return max(ids) + 1 if ids else 0

    def new_names(self, count):
        """``count`` shard file names that the manifest does not use yet."""
        used = {shard.file for shard in self.shards}
        names, number = [], len(self.shards)
        while len(names) < count:
            if shard_name(number) not in used:
                names.append(shard_name(number))
            number += 1
        return names

    def to_json(self):
        """The manifest's JSON object."""
        quantizer = self.code.quantizer()
        return {"format": FORMAT, "version": VERSION, "catalyzer_sha256": self.catalyzer_sha256,
                "code": {**self.code.to_json(), "bits": quantizer.bits,
                         "code_bytes": quantizer.code_bytes},
                "input_dim": self.input_dim, "shard_size": self.shard_size,
                "shards": [shard.to_json() for shard in self.shards]}

    @classmethod
    def from_json(cls, value, where):
        """The manifest of a JSON value; SpreadcodeError "<where> (bad '<field>': why)"."""
        if not isinstance(value, dict):
            raise SpreadcodeError(f"{where}: not a collection manifest (not a JSON object)")
        if value.get("format") != FORMAT:
            raise metadata_error(where, "format", f"{value.get('format')!r}, expected {FORMAT!r}")
        if value.get("version") != VERSION or isinstance(value.get("version"), bool):
            raise SpreadcodeError(f"{where}: collection manifest version "
                                  f"{value.get('version')!r}; this spreadcode reads version "
                                  f"{VERSION}")
        keys = {"format", "version", "catalyzer_sha256", "code", "input_dim", "shard_size",
                "shards"}
        if set(value) != keys:
            raise metadata_error(where, "manifest", f"keys {sorted(value)}, expected "
                                                    f"{', '.join(sorted(keys))}")
        sha = value["catalyzer_sha256"]
        if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
            raise metadata_error(where, "catalyzer_sha256", "not 64 lowercase hex digits")
        code = value["code"]
        if not isinstance(code, dict):
            raise metadata_error(where, "code", "not an object")
        spec = QuantizerSpec.from_json({k: v for k, v in code.items()
                                        if k not in ("bits", "code_bytes")}, where, "code")
        quantizer = spec.quantizer()
        sizes = {"bits": quantizer.bits, "code_bytes": quantizer.code_bytes}
        for key, expected in sizes.items():
            if code.get(key) != expected or not _is_int(code.get(key)):
                raise metadata_error(where, f"code.{key}", f"{code.get(key)!r}, but the code "
                                     f"has {expected}")
        for key, limit in (("input_dim", 2**32), ("shard_size", 2**63)):
            if not _is_int(value[key]) or not 1 <= value[key] < limit:
                raise metadata_error(where, key, f"{value[key]!r} is not a positive integer")
        if not isinstance(value["shards"], list):
            raise metadata_error(where, "shards", "not a list")
        shards = tuple(ShardEntry.from_json(entry, where, f"shards[{i}]")
                       for i, entry in enumerate(value["shards"]))
        files = [shard.file for shard in shards]
        if len(set(files)) != len(files):
            raise metadata_error(where, "shards", "a file is listed twice")
        return cls(sha, spec, value["input_dim"], value["shard_size"], shards)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def manifest_path(directory):
    """``DIR/manifest.json``."""
    return Path(directory) / MANIFEST


def read_manifest(directory):
    """The `Manifest` of the collection ``directory``: strict JSON, every field checked;
    SpreadcodeError naming the file and the field (or saying the directory has none)."""
    directory = Path(directory)
    path = manifest_path(directory)
    if not directory.is_dir():
        raise SpreadcodeError(f"{directory}: no such collection directory")
    if not path.is_file():
        raise SpreadcodeError(f"{directory}: no {MANIFEST}: not a spreadcode collection "
                              "directory")
    return Manifest.from_json(load_json(path.read_bytes(), str(path)), str(path))


def write_manifest(directory, manifest):
    """Replace ``DIR/manifest.json`` atomically (temp file + rename) with ``manifest``."""
    with atomic_output(manifest_path(directory)) as fh:
        fh.write(canonical_json(manifest.to_json()).encode() + b"\n")


def shard_files(directory):
    """The paths a collection reads: its manifest and the shards it lists (for
    `spreadcode.vecio.check_outputs`)."""
    directory = Path(directory)
    return [manifest_path(directory)] + [directory / shard.file
                                         for shard in read_manifest(directory).shards]


def open_directory(directory, verify=True):
    """The manifest and opened shards (`container.SpcFile`, in manifest order) of the
    collection ``directory``, each checked against the manifest, in this order: the
    manifest (`read_manifest`); then per shard: present, a valid .spc header
    (`container.read_header`), the manifest's catalyzer, code, input dimension, count, ids
    stored, payload SHA-256 and (consecutive ids) first and last id; then (``verify``) every
    payload checksum. Returns
    (Manifest, [SpcFile]); SpreadcodeError naming the shard and what differs."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = [_open_shard(directory, shard, manifest) for shard in manifest.shards]
    if verify:
        for spc in files:
            spc.verify()
    return manifest, files


def _open_shard(directory, shard, manifest):
    """The shard of the entry ``shard``, its header checked against ``manifest``."""
    path = directory / shard.file
    if not path.is_file():
        raise SpreadcodeError(f"{path}: shard listed in {manifest_path(directory)} is missing")
    spc = container.open_spc(path, verify=False)
    header, code = spc.header, manifest.code
    quantizer = code.quantizer()
    checks = (
        ("catalyzer", header.catalyzer_sha256, manifest.catalyzer_sha256),
        ("code", (header.kind, header.d, header.param, header.bits, header.code_bytes),
         (code.kind, code.d, code.param, quantizer.bits, quantizer.code_bytes)),
        ("input dimension", header.input_dim, manifest.input_dim),
        ("count", header.count, shard.count),
        ("ids", header.has_ids, True),
        ("payload checksum", header.payload_sha256, shard.payload_sha256),
    )
    for what, found, expected in checks:
        if found != expected:
            raise SpreadcodeError(f"{path}: {what} {_show(found)} differs from the "
                                  f"manifest's {_show(expected)}: not this collection's shard")
    if shard.count and not shard.explicit_ids and (
            (int(spc.ids[0]), int(spc.ids[-1])) != (shard.first_id, shard.last_id)):
        raise SpreadcodeError(f"{path}: ids {int(spc.ids[0])}..{int(spc.ids[-1])} differ from "
                              f"the manifest's {shard.first_id}..{shard.last_id}")
    return spc


def _show(value):
    """A header value for a message (booleans as stored / not stored ids)."""
    if isinstance(value, bool):
        return "stored" if value else "not stored"
    return str(value)


def check_new_ids(directory, manifest, ids, where):
    """SpreadcodeError (naming ``where``, the ids file) unless the int64 ids (n,) are
    unique and none is already in the collection: each shard is checked only when its id
    range overlaps theirs (consecutive shards by range, explicit ones id by id)."""
    ordered = np.sort(np.asarray(ids, dtype=np.int64))
    repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(repeated):
        raise SpreadcodeError(f"{where}: id {int(ordered[repeated[0]])} is given twice; "
                              "ids must be unique")
    if not len(ordered):
        return
    for shard in manifest.shards:
        if shard.count == 0 or shard.last_id < ordered[0] or shard.first_id > ordered[-1]:
            continue
        if shard.explicit_ids:
            stored = container.open_spc(directory / shard.file, verify=False).ids
            slots = np.minimum(np.searchsorted(ordered, stored), len(ordered) - 1)
            clash = stored[ordered[slots] == stored]
        else:
            low = np.searchsorted(ordered, shard.first_id)
            clash = ordered[low:np.searchsorted(ordered, shard.last_id, side="right")]
        if len(clash):
            raise SpreadcodeError(f"{where}: id {int(clash[0])} is already in the collection "
                                  f"({shard.file}); ids must be unique")


def with_shards(manifest, entries):
    """``manifest`` with the `ShardEntry` list ``entries`` appended."""
    return replace(manifest, shards=manifest.shards + tuple(entries))


def catalyzer_of(path):
    """The catalyzer SHA-256 (hex, or None) of a .spc file or a collection directory, read
    from its header or manifest alone."""
    if Path(path).is_dir():
        return read_manifest(path).catalyzer_sha256
    return container.read_header(path).catalyzer_sha256


def files_read(paths):
    """Every file that reading the .spc files and collection directories ``paths`` touches:
    the files as given, each directory as itself, its manifest and its shards."""
    return [item for path in paths
            for item in ([path, *shard_files(path)] if Path(path).is_dir() else [path])]
