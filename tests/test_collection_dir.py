"""Collection directories (spreadcode.collection_dir, formats/collection.md): a directory of
.spc shards and a manifest, written by `encode -o DIR --shard-size N` and `add`, read by
`search`, `info` and `Index.load` exactly like one .spc file of the same codes; every
inconsistency is one clear error, and an interrupted `add` leaves the collection as it was.
Small data: 600 sample vectors, the tiny random catalyzer of tests/helpers.py."""
import json
import shutil

import numpy as np
import pytest

import spreadcode.collection_dir as collection_dir
import spreadcode.encode as encode
from helpers import assert_clean_error, reseal, run, tiny_catalyzer, tiny_meta
from spreadcode import Index, container, vecio
from spreadcode.catalyzer import save_catalyzer
from spreadcode.encode import add_to_collection, encode_collection, encode_file
from spreadcode.errors import SpreadcodeError
from spreadcode.sample import load_sample

QUANTIZER = {"kind": "lattice", "d": 24, "param": 79}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with the tiny catalyzer (and a second, foreign one); inputs a.fvecs (250),
    b.npy (150) for `encode`, c.fvecs (120), d.fvecs (80) for `add`; all.fvecs, their
    concatenation, as one .spc; q.fvecs (20 queries); coll/, the collection after
    `encode a b --shard-size 100` and `add c d` (8 shards)."""
    root = tmp_path_factory.mktemp("colldir")
    base, query = load_sample().base[:600], load_sample().query[:20]
    store = root / "store"
    shas = []
    for seed in (0, 1):
        model = tiny_catalyzer(QUANTIZER["d"], seed=seed)
        shas.append(save_catalyzer(model, tiny_meta(model, QUANTIZER), store=store)[0])
    vecio.write_vectors(root / "a.fvecs", base[:250])
    np.save(root / "b.npy", base[250:400])
    vecio.write_vectors(root / "c.fvecs", base[400:520])
    vecio.write_vectors(root / "d.fvecs", base[520:])
    vecio.write_vectors(root / "all.fvecs", base)
    vecio.write_vectors(root / "q.fvecs", query)
    encode_file(root / "all.fvecs", root / "all.spc", model=shas[0], store=store)
    coll = root / "coll"
    encoded = run("encode", root / "a.fvecs", root / "b.npy", "-o", coll, "--shard-size", 100,
                  "--model", shas[0], "--store", store, "-q")
    assert encoded.exit_code == 0, encoded.output
    assert "400 codes in 5 shards" in encoded.stdout
    added = run("add", coll, root / "c.fvecs", root / "d.fvecs", "--store", store, "-q")
    assert added.exit_code == 0, added.output
    assert "200 codes in 3 shards" in added.stdout and "(600 codes in 8 shards)" in added.stdout
    return {"root": root, "store": store, "sha": shas[0], "foreign": shas[1], "coll": coll,
            "base": base, "query": query}


def copy_collection(world, tmp_path):
    """A copy of the collection to damage or extend."""
    return shutil.copytree(world["coll"], tmp_path / "coll")


def search_results(world, db, tmp_path, *options):
    """(ids, distances) of `spreadcode search DB q.fvecs -k 7` through the CLI."""
    out = tmp_path / f"{db.name}-results.npy"
    result = run("search", db, world["root"] / "q.fvecs", "-k", 7, "-o", out,
                 "--store", world["store"], *options)
    assert result.exit_code == 0, result.output
    return np.load(out), np.load(out.with_name(out.stem + ".distances.npy"))


def test_manifest_lists_shards_with_consecutive_ids(world):
    manifest = collection_dir.read_manifest(world["coll"])
    assert [shard.count for shard in manifest.shards] == [100, 100, 50, 100, 50, 100, 20, 80]
    assert [shard.file for shard in manifest.shards] == [f"shard-{i:05d}.spc" for i in range(8)]
    firsts = np.cumsum([0] + [shard.count for shard in manifest.shards])[:-1]
    assert [shard.first_id for shard in manifest.shards] == firsts.tolist()
    assert [shard.last_id for shard in manifest.shards] == (firsts + [
        shard.count - 1 for shard in manifest.shards]).tolist()
    assert not any(shard.explicit_ids for shard in manifest.shards)
    assert (manifest.catalyzer_sha256, manifest.input_dim, manifest.shard_size) == \
        (world["sha"], 96, 100)
    raw = json.loads((world["coll"] / "manifest.json").read_text())
    assert raw["format"] == "spreadcode-collection" and raw["version"] == 1
    assert raw["code"] == {**QUANTIZER, "bits": 64, "code_bytes": 8}
    for shard in manifest.shards:  # every shard is self-describing: it stores its ids
        spc = container.open_spc(world["coll"] / shard.file)
        assert spc.header.payload_sha256 == shard.payload_sha256
        assert spc.ids.tolist() == list(range(shard.first_id, shard.last_id + 1))


def test_search_equals_one_spc_of_the_same_codes(world, tmp_path):
    ids, distances = search_results(world, world["coll"], tmp_path)
    one_ids, one_distances = search_results(world, world["root"] / "all.spc", tmp_path)
    np.testing.assert_array_equal(ids, one_ids)
    np.testing.assert_array_equal(distances, one_distances)
    coll_index, one_index = (Index.load(path, store=world["store"])
                             for path in (world["coll"], world["root"] / "all.spc"))
    assert len(coll_index) == len(one_index) == 600 and coll_index.d == 96
    for got, expected in zip(coll_index.search(world["query"], 50),
                             one_index.search(world["query"], 50)):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(coll_index.range_search(world["query"], 0.9),
                             one_index.range_search(world["query"], 0.9)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(coll_index.reconstruct([0, 333, 599]),
                                  one_index.reconstruct([0, 333, 599]))


def test_info_summarises_and_verifies_a_collection(world):
    result = run("info", world["coll"], "--store", world["store"])
    assert result.exit_code == 0, result.output
    rows = {key.rstrip(":"): value.strip() for key, value in
            (line.split(":", 1) for line in result.stdout.splitlines())}
    assert rows["shards"] == "8" and rows["vectors"] == "600" and rows["ids"] == "0 to 599"
    assert rows["code"] == "lattice S(24, r²=79)" and rows["catalyzer sha256"] == world["sha"]
    assert rows["checksums"] == "ok (8 shards)"
    assert rows["catalyzer in store"].endswith(f"{world['sha']}.safetensors")


def test_bit_rot_in_a_shard_is_reported_by_info_and_refused_by_search(world, tmp_path):
    coll = copy_collection(world, tmp_path)
    shard = coll / "shard-00003.spc"
    data = bytearray(shard.read_bytes())
    data[container.read_header(shard).payload_offset] ^= 1
    shard.write_bytes(bytes(data))
    info = run("info", coll, "--store", world["store"])
    assert "MISMATCH in shard-00003.spc" in info.stdout
    assert_clean_error(info, "shard-00003.spc", "payload checksum mismatch")
    search = run("search", coll, world["root"] / "q.fvecs", "--store", world["store"])
    assert_clean_error(search, "shard-00003.spc", "payload checksum mismatch")


def test_a_shard_that_is_not_the_manifests_is_refused(world, tmp_path):
    coll = copy_collection(world, tmp_path)
    shard = coll / "shard-00001.spc"
    data = bytearray(shard.read_bytes())
    data[container.read_header(shard).payload_offset] ^= 1
    shard.write_bytes(reseal(data))  # a valid .spc file, but other codes
    for command in (("info", coll), ("search", coll, world["root"] / "q.fvecs")):
        assert_clean_error(run(*command, "--store", world["store"]), "shard-00001.spc",
                           "payload checksum", "differs from the manifest's")


def test_missing_shard(world, tmp_path):
    coll = copy_collection(world, tmp_path)
    (coll / "shard-00002.spc").unlink()
    for command in (("info", coll), ("search", coll, world["root"] / "q.fvecs")):
        assert_clean_error(run(*command, "--store", world["store"]), "shard-00002.spc",
                           "is missing")


def test_shard_of_a_foreign_catalyzer(world, tmp_path):
    coll = copy_collection(world, tmp_path)
    foreign = tmp_path / "foreign"
    encode_collection([world["root"] / "a.fvecs"], foreign, model=world["foreign"],
                      shard_size=100, store=world["store"])
    shutil.copy(foreign / "shard-00000.spc", coll / "shard-00000.spc")
    for command in (("info", coll), ("search", coll, world["root"] / "q.fvecs")):
        assert_clean_error(run(*command, "--store", world["store"]), "shard-00000.spc",
                           f"catalyzer {world['foreign']} differs", world["sha"])


@pytest.mark.parametrize("text, fragments", [
    ("{", ["manifest.json", "not valid JSON"]),
    ('{"format": "spreadcode-collection", "version": NaN}', ["manifest.json", "NaN"]),
    ("[]", ["manifest.json", "not a collection manifest"]),
    ('{"format": "spreadcode-collection", "version": 2}', ["manifest.json", "version 2"]),
])
def test_malformed_manifest(world, tmp_path, text, fragments):
    coll = copy_collection(world, tmp_path)
    (coll / "manifest.json").write_text(text)
    for command in (("info", coll), ("search", coll, world["root"] / "q.fvecs")):
        assert_clean_error(run(*command, "--store", world["store"]), *fragments)


@pytest.mark.parametrize("edit, fragments", [
    (lambda m: m["shards"][4].update(count=-1), ["shards[4].count"]),
    (lambda m: m["shards"][4].update(last_id=1000), ["shards[4].last_id"]),
    (lambda m: m["shards"][0].update(file="../all.spc"), ["shards[0].file"]),
    (lambda m: m["shards"][0].update(payload_sha256="00"), ["shards[0].payload_sha256"]),
    (lambda m: m["code"].update(bits=63), ["code.bits"]),
    (lambda m: m["code"].update(param=0), ["'code'"]),
    (lambda m: m.pop("input_dim"), ["'manifest'", "input_dim"]),
    (lambda m: m.update(version=True), ["version True"]),
    (lambda m: m.update(shard_size=0), ["'shard_size'"]),
    (lambda m: m["shards"].append(m["shards"][0]), ["listed twice"]),
    (lambda m: m["shards"][2].update(count=49, last_id=248), ["shard-00002.spc", "count 50"]),
])
def test_bad_manifest_fields_are_named(world, tmp_path, edit, fragments):
    coll = copy_collection(world, tmp_path)
    manifest = json.loads((coll / "manifest.json").read_text())
    edit(manifest)
    (coll / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(run("search", coll, world["root"] / "q.fvecs", "--store",
                           world["store"]), *fragments)


def test_directory_without_manifest(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run("info", empty), "no manifest.json")
    assert_clean_error(run("search", empty, world["root"] / "q.fvecs", "--store",
                           world["store"]), "no manifest.json")
    with pytest.raises(SpreadcodeError, match="no manifest.json"):
        Index.load(empty)


def snapshot(directory):
    """{name: bytes} of every file in ``directory`` (temporaries included)."""
    return {path.name: path.read_bytes() for path in directory.iterdir()}


@pytest.mark.parametrize("where", ["second shard", "manifest"])
def test_interrupted_add_leaves_the_collection_as_it_was(world, tmp_path, monkeypatch, where):
    coll = copy_collection(world, tmp_path)
    before = snapshot(coll)
    results = search_results(world, coll, tmp_path)
    if where == "second shard":  # the first new shard is complete, the second half-written
        calls = []
        real = encode.encode_codes

        def encode_codes(*args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(*args)
        monkeypatch.setattr(encode, "encode_codes", encode_codes)
    else:  # every new shard is complete, the manifest half-written
        real = collection_dir.atomic_output

        def atomic_output(path):
            context = real(path)

            class Interrupted:
                def __enter__(self):
                    fh = context.__enter__()
                    fh.write(b'{"format"')
                    return fh

                def __exit__(self, *exc):
                    context.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)
                    raise KeyboardInterrupt
            return Interrupted()
        monkeypatch.setattr(collection_dir, "atomic_output", atomic_output)
    interrupted = run("add", coll, world["root"] / "c.fvecs", "--shard-size", 50,
                      "--store", world["store"], "-q")
    assert interrupted.exit_code == 130 and "interrupted" in interrupted.stderr
    assert snapshot(coll) == before  # same manifest and shards, no new file, no temporary
    monkeypatch.undo()
    for got, expected in zip(search_results(world, coll, tmp_path), results):
        np.testing.assert_array_equal(got, expected)


def test_explicit_ids_are_stored_and_must_be_unique(world, tmp_path):
    coll = copy_collection(world, tmp_path)
    ids_file = tmp_path / "ids.npy"
    np.save(ids_file, np.arange(120, dtype=np.int64) * -7 - 1)  # -1, -8, ..., -834
    added = run("add", coll, world["root"] / "c.fvecs", "--ids", ids_file, "--shard-size", 200,
                "--store", world["store"], "-q")
    assert added.exit_code == 0, added.output
    entry = collection_dir.read_manifest(coll).shards[-1]
    assert (entry.explicit_ids, entry.first_id, entry.last_id) == (True, -834, -1)
    np.testing.assert_array_equal(  # c.fvecs is rows 400... of all.spc
        Index.load(coll, store=world["store"]).reconstruct([-1, -8, -834]),
        Index.load(world["root"] / "all.spc", store=world["store"]).reconstruct([400, 401, 519]))
    before = snapshot(coll)
    clashes = {"repeated": np.r_[np.arange(79), 3] + 10_000,
               "a consecutive shard's": np.arange(80) + 590,   # 599 is in shard-00007
               "an explicit shard's": np.arange(80) * -1000 - 8}  # -8 is in the explicit shard
    for name, ids in clashes.items():
        np.save(ids_file, ids)
        refused = run("add", coll, world["root"] / "d.fvecs", "--ids", ids_file, "--store",
                      world["store"])
        assert_clean_error(refused, str(ids_file), "ids must be unique")
        assert snapshot(coll) == before, name
    np.save(ids_file, np.arange(3))
    assert_clean_error(run("add", coll, world["root"] / "d.fvecs", "--ids", ids_file,
                           "--store", world["store"]), str(ids_file), "expected 80")
    added = run("add", coll, world["root"] / "d.fvecs", "--store", world["store"], "-q")
    assert added.exit_code == 0, added.output  # consecutive after the largest id, 599
    assert collection_dir.read_manifest(coll).shards[-1].first_id == 600


def test_outputs_that_are_inputs_are_refused(world, tmp_path):
    coll = copy_collection(world, tmp_path)
    before = snapshot(coll)
    manifest = coll / "manifest.json"
    assert_clean_error(run("add", coll, manifest, "--store", world["store"]),
                       str(manifest), "same file as the input")
    assert snapshot(coll) == before
    with pytest.raises(SpreadcodeError, match="same file as the input"):
        add_to_collection(coll, [coll], store=world["store"])
    new = tmp_path / "new"
    new.mkdir()
    with pytest.raises(SpreadcodeError, match="same file as the input"):
        encode_collection([new], new, shard_size=10, model=world["sha"], store=world["store"])


def test_encode_refuses_an_existing_collection_or_a_full_directory(world, tmp_path):
    a = world["root"] / "a.fvecs"
    coll = copy_collection(world, tmp_path)
    assert_clean_error(run("encode", a, "-o", coll, "--shard-size", 10, "--store",
                           world["store"]), str(coll), "already a collection", "spreadcode add")
    assert_clean_error(run("encode", a, "-o", world["root"], "--shard-size", 10, "--store",
                           world["store"]), "not empty")
    for args in (("-o", tmp_path / "x.spc", "--shard-size", 10), ("-o", tmp_path / "x.spc", a),
                 ("-o", tmp_path / "y", "--ids", a)):
        usage = run("encode", a, *args)
        assert usage.exit_code == 2 and "collection directory" in usage.stderr, usage.output
    assert not (tmp_path / "x.spc").exists()


def test_ties_go_to_the_lower_id_when_shards_store_ids_in_another_order(world, tmp_path):
    """Hamming distances of 16-bit sign codes tie all the time; with explicit ids that
    decrease inside each shard, each shard's top-k must still keep the lower ids: results
    equal a brute-force ranking of every code by (distance, id)."""
    from spreadcode.catalyzer import catalyze

    model = tiny_catalyzer(16, seed=2)
    sha, _ = save_catalyzer(model, tiny_meta(model, {"kind": "sign", "d": 16, "param": 16}),
                            store=world["store"])
    ids_file = tmp_path / "ids.npy"
    all_ids = 10_000 - 3 * np.arange(600)
    np.save(ids_file, all_ids)
    encoded = run("encode", world["root"] / "all.fvecs", "-o", tmp_path / "signs",
                  "--shard-size", 250, "--ids", ids_file, "--model", sha, "--store",
                  world["store"], "-q")
    assert encoded.exit_code == 0, encoded.output
    index = Index.load(tmp_path / "signs", store=world["store"])
    codes = np.vstack([index._collection.codes(i) for i in range(3)])
    every, positions = index.quantizer.search(codes, catalyze(index.catalyzer, world["query"]),
                                              600, hamming=True)
    order = np.lexsort((all_ids[positions], every), axis=1)
    for k in (1, 5, 40, 300):
        distances, ids = index.search(world["query"], k, hamming=True)
        np.testing.assert_array_equal(ids, np.take_along_axis(all_ids[positions], order,
                                                              axis=1)[:, :k])
        np.testing.assert_array_equal(distances, np.take_along_axis(every, order, axis=1)[:, :k])
