"""Dask execution (spreadcode/distributed.py): a LocalCluster of 2 worker processes writes
the same collection, byte for byte, as the single-process path, and searches it with
identical results (ties included), for every search mode; a failed task leaves the
collection as it was; an unreachable scheduler and a missing dask are one clear line.
Small data: 600 sample vectors (100 of them duplicates, so that distances tie), the tiny
catalyzers of tests/helpers.py and a residual model trained one epoch."""
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_clean_error, run, tiny_catalyzer, tiny_meta
from spreadcode import (Index, collection_dir, container, distributed, encode, malloc, residual,
                        search, vecio)
from spreadcode.catalyzer import load_catalyzer, save_catalyzer
from spreadcode.collection import open_collection
from spreadcode.encode import add_to_collection, encode_collection
from spreadcode.errors import SpreadcodeError
from spreadcode.sample import load_sample

pytest.importorskip("distributed")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

LATTICE = {"kind": "lattice", "d": 24, "param": 79}
SIGN = {"kind": "sign", "d": 16, "param": 16}


@pytest.fixture(scope="module")
def client():
    """A dask.distributed client of a LocalCluster of 2 worker processes."""
    with distributed.open_client(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with a lattice, a sign and a residual model; base vectors a.fvecs (350) and
    b.npy (250), whose last 100 rows repeat rows 0-99 (equal codes: ties); the same as
    Parquet files (a fixed_size_list column, row groups of 30; a list column, row groups of
    17) with an id column; explicit ids (decreasing) in ids.npy; 20 queries."""
    root = tmp_path_factory.mktemp("dist")
    sample = load_sample()
    base = np.vstack([sample.base[:500], sample.base[:100]])
    store = root / "store"
    shas = {}
    for name, spec, d_out in (("lattice", LATTICE, 24), ("sign", SIGN, 16)):
        model = tiny_catalyzer(d_out, seed=len(shas))
        shas[name] = save_catalyzer(model, tiny_meta(model, spec), store=store)[0]
    trained = residual.train_residual(
        sample.learn[:2000], residual.ResidualConfig(
            blocks=residual.stage_blocks(24), hidden=32, hidden_decoder=64, epochs=1,
            batch_size=64, device="cpu"), progress=False)
    shas["residual"] = save_catalyzer(trained.model, trained.meta, store=store)[0]
    vecio.write_vectors(root / "a.fvecs", base[:350])
    np.save(root / "b.npy", base[350:])
    ids = (5_000 - 7 * np.arange(600)).astype(np.int64)
    np.save(root / "ids.npy", ids)
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(base[:350].ravel()), 96)
    pq.write_table(pa.table({"vec": fixed, "key": ids[:350]}), root / "a.parquet",
                   row_group_size=30)
    pq.write_table(pa.table({"vec": pa.array(list(base[350:]), type=pa.list_(pa.float32())),
                             "key": ids[350:]}), root / "b.parquet", row_group_size=17)
    vecio.write_vectors(root / "q.fvecs", sample.query[:20])
    return {"root": root, "store": store, "sha": shas, "query": sample.query[:20],
            "inputs": [root / "a.fvecs", root / "b.npy"]}


def snapshot(directory):
    """{name: bytes} of every file in ``directory`` (temporaries included)."""
    return {path.name: path.read_bytes() for path in Path(directory).iterdir()}


def build(world, model, client, ids=False, name=None, **options):
    """The collection of the base inputs encoded by ``model`` into shards of 100 (explicit
    ids with ``ids``), in this process or on ``client``; made once per ``name``."""
    name = name or f"{model}{'-ids' if ids else ''}"
    ids = world["root"] / "ids.npy" if ids else None
    out = world["root"] / f"{name}-{'dask' if client else 'serial'}"
    if not out.exists():
        encode_collection(options.pop("inputs", world["inputs"]), out,
                          model=world["sha"][model], shard_size=100, ids=ids,
                          store=world["store"], client=client, **options)
    return out


@pytest.mark.parametrize("model, ids", [("lattice", False), ("sign", True),
                                        ("residual", False)])
def test_dask_encoding_writes_the_same_bytes(world, client, model, ids):
    serial, dask = (build(world, model, where, ids) for where in (None, client))
    assert snapshot(serial) == snapshot(dask)
    assert len(collection_dir.read_manifest(dask).shards) == 7  # 350 = 100+100+100+50, ...


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_workers_set_their_malloc_thresholds_before_a_task(world, client):
    """Dask's MALLOC_TRIM_THRESHOLD_ freezes glibc's mmap threshold in the workers; each
    sets its own once it has run a task (the encode of the first test here, or this one's)."""
    build(world, "lattice", client)
    tuned = client.run(lambda: malloc.thresholds_set)
    assert len(tuned) == 2
    assert True in tuned.values()
    assert set(tuned.values()) <= {None, True}


def test_dask_add_appends_the_same_shards(world, client, tmp_path):
    colls = [shutil.copytree(build(world, "lattice", None), tmp_path / name)
             for name in ("serial", "dask")]
    for coll, where in zip(colls, (None, client)):
        summary = add_to_collection(coll, [world["root"] / "b.npy"], shard_size=60,
                                    store=world["store"], client=where, progress=True)
        assert (summary.added, summary.shards_added, summary.count) == (250, 5, 850)
    assert snapshot(colls[0]) == snapshot(colls[1])


def test_parquet_on_workers_equals_npy_in_this_process(world, client):
    """Parquet inputs read by the workers by row range (row groups of 30 and 17 rows,
    shards of 100), ids from a column: the codes and ids of the .npy inputs with an ids
    file."""
    serial = build(world, "sign", None, ids=True)
    dask = build(world, "sign", client, name="parquet", id_column="key", dataset="vec",
                 inputs=[world["root"] / "a.parquet", world["root"] / "b.parquet"])
    assert (serial / "manifest.json").read_bytes() == (dask / "manifest.json").read_bytes()


def assert_same_search(world, serial_dir, dask_dir, client, decode_memory=None, **options):
    """Index.load of both collections (the second on ``client``; both with
    ``decode_memory``) gives identical k-NN results for several k (one and several shards,
    capped at the count), identical range results, and equal distances come in increasing
    id order."""
    serial = Index.load(serial_dir, store=world["store"], decode_memory=decode_memory)
    dask = Index.load(dask_dir, store=world["store"], client=client,
                      decode_memory=decode_memory)
    for k in (1, 7, 150, 1000):
        want = serial.search(world["query"], k, **options)
        got = dask.search(world["query"], k, **options)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        ties = got[0][:, 1:] == got[0][:, :-1]
        assert np.all(got[1][:, 1:][ties] > got[1][:, :-1][ties])
        assert ties.any() or k < 150
    return serial, dask


def test_dask_compressed_domain_search_is_identical(world, client):
    serial, dask = assert_same_search(world, build(world, "lattice", None),
                                      build(world, "lattice", client), client)
    for got, want in zip(dask.range_search(world["query"], 0.9),
                         serial.range_search(world["query"], 0.9)):
        np.testing.assert_array_equal(got, want)


def test_dask_hamming_search_with_explicit_ids_is_identical(world, client):
    assert_same_search(world, build(world, "sign", None, ids=True),
                       build(world, "sign", client, ids=True), client, hamming=True)


@pytest.mark.parametrize("options", [{}, {"rerank": 0}, {"decode_all": True}])
def test_dask_residual_search_is_identical(world, client, options):
    """A residual model's shortlist (decoded codes, on the workers) and its re-ranking
    (here); the searches after the first reuse the shards each worker decoded."""
    serial, dask = assert_same_search(world, build(world, "residual", None),
                                      build(world, "residual", client), client, **options)
    assert all(client.run(lambda: len(distributed._WORKER_DECODED)).values())
    if not options:
        for got, want in zip(dask.range_search(world["query"], 0.5),
                             serial.range_search(world["query"], 0.5)):
            np.testing.assert_array_equal(got, want)


def test_dask_residual_search_keeping_part_of_the_codes_decoded_is_identical(world, client):
    """Room for 150 decoded codes per process (float32 for the full decoder, int8 rows for
    the shortlist): this process keeps the first shard of 100 (the second's 50 rows of room
    are less than a block), each worker what fits of its shards; the rest is decoded by
    every search, with the same results in both."""
    d_in = world["query"].shape[1]
    client.run(lambda: distributed._WORKER_DECODED.clear())
    for options, row_bytes in (({"decode_all": True}, d_in * 4), ({}, d_in + 4)):
        assert_same_search(world, build(world, "residual", None),
                           build(world, "residual", client), client,
                           decode_memory=150 * row_bytes, **options)
        kept = client.run(lambda: [len(array) for array, _ in
                                   distributed._WORKER_DECODED.values()])
        assert len(kept) == 2 and all(0 < sum(rows) <= 150 for rows in kept.values())


def _offsets_so_far(quantizer, part, offset, previous):
    """A `chain_parts` function: the offsets of the parts of its run so far."""
    return (previous or ()) + (offset,)


def _fail_at_200(quantizer, part, offset, previous):
    """A `chain_parts` function that fails on the part at offset 200."""
    if offset == 200:
        raise ValueError("no part at 200")
    return offset


def test_chain_parts_runs_consecutive_parts_one_run_per_worker(world, client):
    """Each run hands its result to the next part's task; one run per worker, in part
    order, covering every part once; a failure names the part that failed, not the tasks
    after it in its run (which fail with its error)."""
    coll = open_collection([build(world, "lattice", None)])  # shards of 100 or 50 rows
    runs = sorted(distributed.chain_parts(client, coll, _offsets_so_far))
    assert runs == [(0, 100, 200, 300), (350, 450, 550)]
    with pytest.raises(SpreadcodeError, match=r"shard-00002.spc: ValueError: no part at 200"):
        list(distributed.chain_parts(client, coll, _fail_at_200))


def test_a_client_sends_a_decoder_to_its_workers_once(world, client):
    """The shortlist decoder of a residual model (its 26 MB model, for the default one; as
    int8 rows for a re-ranked shortlist) is scattered to every worker by the first search and
    reused by the next ones; the LocalCluster's scheduler runs no Active Memory Manager, which
    would drop all copies but one."""
    distributed._SHIPPED.pop(client, None)  # forget what the tests before sent
    index = Index.load(build(world, "residual", None), store=world["store"], client=client)
    index.search(world["query"], 5)
    kept = dict(distributed._SHIPPED[client])
    assert [key[:2] for key in kept] == [(search.Int8Decoder, "shortlist-int8")]
    index.search(world["query"][:7], 3)
    assert {key: future.key for key, future in distributed._SHIPPED[client].items()} == \
        {key: future.key for key, future in kept.items()}
    [future] = kept.values()
    assert sorted(client.who_has([future])[future.key]) == sorted(client.nthreads())
    assert client.run_on_scheduler(
        lambda dask_scheduler: dask_scheduler.extensions["amm"].running) is False


def test_a_local_cluster_leaves_this_process_environment_as_it_was(world, monkeypatch):
    """Dask's nannies set OMP_NUM_THREADS=1 (and friends) in the process that starts them;
    torch would then run this process's catalyzer and re-ranking on one thread. A decoder
    its searches sent is sent again once the worker holding it is lost, and forgotten when
    the client closes."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    with distributed.open_client(workers=1) as client:
        assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "3"
        assert list(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == ["1"]
        index = Index.load(build(world, "residual", None), store=world["store"], client=client)
        want = index.search(world["query"], 3)
        [sent] = distributed._SHIPPED[client].values()
        client.restart()  # the worker holding the decoder is gone: it is sent again
        got = index.search(world["query"], 3)
        [again] = distributed._SHIPPED[client].values()
        assert again.key != sent.key and again.status == "finished"
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert client not in distributed._SHIPPED


class CountingDecoder:
    """A residual model's shortlist decoder under another sha256, counting its ``decode``
    calls."""

    def __init__(self, decoder, sha256):
        self.decoder, self.sha256, self.calls = decoder, sha256, 0
        self.kind, self.d_in, self.row_dtype = decoder.kind, decoder.d_in, decoder.row_dtype

    def decode(self, codes):
        self.calls += 1
        return self.decoder.decode(codes)


def test_a_worker_keeps_decoded_shards_within_its_byte_bound(world, tmp_path, monkeypatch):
    """`worker_decoded_blocks` (no cluster needed: it is per process) decodes a shard once
    per decoder and block, holds it as one array equal to the blocks `decoded_blocks`
    gives, decodes again for another decoder or a changed file at the same path; within its
    byte bound it keeps what fits (whole shards, then whole blocks of one), never evicting
    a shard that the same search uses (its shards come round in the same order every batch)
    but evicting other searches' least recently used ones first."""
    from spreadcode.search import decoded_blocks

    monkeypatch.setattr(distributed, "_WORKER_DECODED", distributed.OrderedDict())
    model, meta = load_catalyzer(world["sha"]["residual"], store=world["store"])
    shortlist = residual.ModelDecoder(model, meta.sha256, "shortlist")
    first, other = CountingDecoder(shortlist, "a" * 64), CountingDecoder(shortlist, "b" * 64)
    shards = sorted(build(world, "residual", None).glob("*.spc"))[:3]  # 100 codes each
    spc = [container.open_spc(path) for path in shards]
    shard_bytes = 100 * model.d_in * 4

    def blocks(part, decoder, search=None, budget=None):
        return list(distributed.worker_decoded_blocks(model.quantizer, part, 0, decoder, 32,
                                                      budget, search))

    def decodes(part, decoder, search=None, budget=None):
        calls = decoder.calls
        got = blocks(part, decoder, search, budget)
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(
            list(decoded_blocks(model.quantizer, part, shortlist, 32))))
        return decoder.calls - calls

    def held():
        return [(shards.index(Path(key[0])), len(kept), used_by)
                for key, (kept, used_by) in distributed._WORKER_DECODED.items()]

    got = blocks(spc[0], first)
    assert len(got) == 1 and got[0].shape == (100, model.d_in)
    assert first.calls == 4
    assert blocks(spc[0], first)[0] is got[0] and first.calls == 4
    assert decodes(spc[0], other) == 4
    changed = tmp_path / "shard.spc"
    for shard in shards[1:]:  # the same path, another payload
        shutil.copyfile(shard, tmp_path / "new.spc")
        os.replace(tmp_path / "new.spc", changed)
        assert decodes(container.open_spc(changed), first) == 4
    distributed._WORKER_DECODED.clear()

    # Room for two shards: one search keeps its first two, and they stay for its next batch.
    assert [[decodes(part, first, "s1", 2 * shard_bytes) for part in spc]
            for _ in range(2)] == [[4, 4, 4], [0, 0, 4]]
    assert held() == [(0, 100, "s1"), (1, 100, "s1")]
    # Another search evicts the least recently used of s1's shards, not its own.
    assert decodes(spc[2], first, "s2", 2 * shard_bytes) == 4
    assert decodes(spc[1], first, "s2", 2 * shard_bytes) == 0
    assert decodes(spc[0], first, "s2", 2 * shard_bytes) == 4
    assert held() == [(2, 100, "s2"), (1, 100, "s2")]
    distributed._WORKER_DECODED.clear()

    # Room for 1.5 shards: the first whole, then one block of 32 rows of the second.
    assert [decodes(part, first, "s3", shard_bytes * 3 // 2) for part in spc] == [4, 4, 4]
    assert [decodes(part, first, "s3", shard_bytes * 3 // 2) for part in spc] == [0, 3, 4]
    assert held() == [(0, 100, "s3"), (1, 32, "s3")]
    # A lower budget shrinks what a search keeps as it comes round: room for one shard
    # keeps 64 rows of the first beside the second's 32; none keeps nothing.
    assert [decodes(part, first, "s3", shard_bytes) for part in spc[:2]] == [4, 3]
    assert held() == [(0, 64, "s3"), (1, 32, "s3")]
    assert [decodes(part, first, "s3", 0) for part in spc[:2]] == [4, 4]
    assert held() == []
    # Less than a block of room keeps nothing; without a search token every shard may go.
    assert [decodes(spc[0], first, "s4", 31 * model.d_in * 4) for _ in range(2)] == [4, 4]
    assert held() == []
    assert [decodes(part, first, None, shard_bytes) for part in spc[:2]] == [4, 4]
    assert held() == [(1, 100, None)]


def test_dask_verification_finds_a_corrupt_shard(world, client, tmp_path):
    coll = shutil.copytree(build(world, "lattice", None), tmp_path / "coll")
    shard = coll / "shard-00004.spc"
    data = bytearray(shard.read_bytes())
    data[container.read_header(shard).payload_offset] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(SpreadcodeError, match="shard-00004.spc.*checksum mismatch"):
        Index.load(coll, store=world["store"], client=client)
    index = Index.load(build(world, "lattice", None), store=world["store"], client=client)
    index.add(world["query"], ids=np.arange(20) + 10**6)
    with pytest.raises(SpreadcodeError, match="codes held in memory"):
        index.search(world["query"], 3)


def test_a_failed_task_leaves_the_collection_as_it_was(world, client, tmp_path):
    coll = shutil.copytree(build(world, "lattice", None), tmp_path / "coll")
    before = snapshot(coll)
    bad = np.load(world["root"] / "b.npy")
    bad[170, 5] = np.nan  # in the third of the five new shards
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(SpreadcodeError) as err:
        add_to_collection(coll, [world["root"] / "a.fvecs", tmp_path / "bad.npy"],
                          shard_size=50, store=world["store"], client=client)
    assert str(err.value).startswith("shard-00017.spc (rows 150:200 of bad.npy): ")
    assert "vector 170 contains NaN" in str(err.value)
    assert snapshot(coll) == before  # no new shard, no temporary, the same manifest


def _die_on_third(task, catalyzer, meta, batch):
    """A `write_shard` whose worker process dies on the third shard."""
    if task.path.name == "shard-00002.spc":
        os._exit(1)
    return encode.write_shard(task, catalyzer, meta, batch)


@pytest.mark.slow  # the scheduler retries the task on restarted workers: ~15 s
def test_a_dying_worker_is_one_line_naming_the_shard(world, client, tmp_path):
    directory = tmp_path / "coll"
    directory.mkdir()
    _, meta = load_catalyzer(world["sha"]["lattice"], store=world["store"])
    files = [vecio.open_vectors(path) for path in world["inputs"]]
    manifest = collection_dir.Manifest(meta.sha256, meta.quantizer, 96, 100)
    tasks = encode.plan_shards(directory, manifest, files, 100)
    with pytest.raises(SpreadcodeError, match=r"^shard-00002.spc \(rows 200:300 of a.fvecs\): "
                                              "the Dask workers running it died"):
        distributed.write_shards(client, tasks, _die_on_third, meta)
    client.wait_for_workers(2)


def test_unreachable_scheduler_and_missing_dask_are_one_line(world, monkeypatch):
    with pytest.raises(SpreadcodeError, match="cannot reach the Dask scheduler at "
                                              "tcp://127.0.0.1:1: "):
        with distributed.open_client(scheduler="tcp://127.0.0.1:1", timeout=1):
            pass
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1)
    result = run("search", build(world, "lattice", None), world["root"] / "q.fvecs",
                 "--scheduler", "tcp://127.0.0.1:1", "--store", world["store"])
    assert_clean_error(result, "cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    monkeypatch.setenv("SPREADCODE_SCHEDULER", "tcp://127.0.0.1:1")
    result = run("add", build(world, "lattice", None), world["root"] / "b.npy",
                 "--store", world["store"])
    assert_clean_error(result, "cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    monkeypatch.delenv("SPREADCODE_SCHEDULER")
    monkeypatch.setitem(sys.modules, "distributed", None)
    result = run("encode", world["inputs"][0], "-o", world["root"] / "never", "--shard-size",
                 10, "--workers", 2, "--model", world["sha"]["lattice"], "--store",
                 world["store"])
    assert_clean_error(result, "install spreadcode[dist] for --workers/--scheduler")
    assert not (world["root"] / "never").exists()


def test_cli_runs_on_the_scheduler_given(world, client, tmp_path, monkeypatch):
    """encode --scheduler ADDRESS, then search with $SPREADCODE_SCHEDULER: the files and
    results of the single-process commands."""
    address = client.scheduler.address
    common = ("--model", world["sha"]["lattice"], "--store", world["store"], "-q")
    encoded = run("encode", *world["inputs"], "-o", tmp_path / "coll", "--shard-size", 100,
                  "--scheduler", address, *common)
    assert encoded.exit_code == 0, encoded.output
    assert "600 codes in 7 shards" in encoded.stdout
    assert snapshot(tmp_path / "coll") == snapshot(build(world, "lattice", None))
    monkeypatch.setenv("SPREADCODE_SCHEDULER", address)
    searched = run("search", tmp_path / "coll", world["root"] / "q.fvecs", "-k", 9, "-o",
                   tmp_path / "dask.npy", "--store", world["store"])
    assert searched.exit_code == 0, searched.output
    monkeypatch.delenv("SPREADCODE_SCHEDULER")
    searched = run("search", tmp_path / "coll", world["root"] / "q.fvecs", "-k", 9, "-o",
                   tmp_path / "serial.npy", "--store", world["store"])
    assert searched.exit_code == 0, searched.output
    for name in ("", ".distances"):
        assert (tmp_path / f"dask{name}.npy").read_bytes() == \
            (tmp_path / f"serial{name}.npy").read_bytes()
    both = run("search", tmp_path / "coll", world["root"] / "q.fvecs", "--workers", 2,
               "--scheduler", address)
    assert both.exit_code == 2 and "give one of them" in both.stderr


@pytest.mark.slow  # starts its own cluster of 2 workers
def test_cli_workers_start_a_local_cluster(world, tmp_path):
    encoded = run("encode", *world["inputs"], "-o", tmp_path / "coll", "--shard-size", 100,
                  "--workers", 2, "--model", world["sha"]["lattice"], "--store",
                  world["store"], "-q")
    assert encoded.exit_code == 0, encoded.output
    assert snapshot(tmp_path / "coll") == snapshot(build(world, "lattice", None))
