"""Dask execution (dask.distributed, ``pip install spreadcode[dist]``): the shards of a
collection encoded, and collections searched, by the worker processes of a cluster.

Nothing here runs, and Dask is not even imported, unless a client is given: `open_client`
starts a LocalCluster of N worker processes (one thread each) or connects to a running
scheduler, and the functions that take ``client=`` (`spreadcode.encode.encode_collection`,
`add_to_collection`, `spreadcode.index.Index.load`, the ``prepare_*`` of `spreadcode.search`)
hand their independent per-shard tasks to it:

* encoding (`write_shards`): one task per `spreadcode.encode.ShardTask`. The worker reads
  its rows by path, loads the catalyzer once per process (`_worker_model`), writes the shard
  (temp file + rename) and returns its small `ShardEntry`; the client writes the manifest
  last. When a task fails, the tasks not started yet are skipped (a Dask Event each checks
  first), the running ones are awaited, and the caller deletes every new shard: the
  collection stays as it was.
* search (`map_parts`): one task per (part, query batch). The worker opens the .spc file by
  path (memory-mapped, once per process) and returns the part's top-k (or range results) of
  the batch: the per-part function the single-process search calls, with the same
  arguments, so once the client merges them exactly (by (distance, id)), the results are
  identical. Codes never travel; the queries of a batch are sent to every worker once per
  batch, a decoder once per client. A search among decoded codes runs each worker's shards
  as a chain (`chain_parts`): each task gets the top-k of the shards before it, whose k-th
  distances bound its scan, as one process bounds each part by those before it; each worker
  keeps what fits of its shards' decoded codes for later batches and searches
  (`worker_decoded_blocks`).

Workers must import the same spreadcode and see the same paths (one machine, or a shared
filesystem); paths are made absolute on the client.
"""
from __future__ import annotations

import logging
import os
import threading
import types
import uuid
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import container, malloc
from .errors import SpreadcodeError
from .quantizer import QuantizerSpec

# Seconds `open_client` waits for a scheduler.
CONNECT_TIMEOUT = 10
# Opened .spc files a worker keeps (each holds a memory map and a file descriptor).
WORKER_OPEN_FILES = 256

_WORKER_MODELS = {}          # (path, sha256) -> (catalyzer, CatalyzerMeta), in each worker
_WORKER_PARTS = OrderedDict()  # (path, payload sha256, spec) -> (quantizer, SpcFile), LRU
# Decoded shards a worker keeps for later query batches and searches (`worker_decoded_blocks`),
# at most this many bytes per worker process: without them each batch decoded every shard
# again, and 2 workers searched 1M codes at 70 q/s where one process (which keeps them)
# reached 158 (BENCHMARKS.md, "Collections at 1M vectors", run H). 1 GiB: 10.7M 96-d codes
# of a residual model's shortlist per worker (`spreadcode.search.int8_rows`, 100 bytes each;
# 2.8M float32 vectors of another decoder), a quarter or less of the memory Dask lets a
# LocalCluster worker use (the machine's divided by the workers) at 4 GiB or more per worker.
WORKER_DECODED_BYTES = 1 << 30
# (path, payload sha256, decoder kind, decoder sha256, block) -> (kept rows (r,) of the
# decoder's row_dtype, token of the last search that used it), least recently used first
_WORKER_DECODED = OrderedDict()
_WORKER_DECODED_LOCK = threading.Lock()
# client -> {(type, kind, sha256): Future}: the decoders a client's searches sent its workers
# (a residual model's: 26 MB pickled), each sent once and kept there until the client closes.
# Sent with every batch, one worker fetching it from the other took 0.2 s of a 1.5 s search.
_SHIPPED = {}
_SHIPPED_LOCK = threading.Lock()
SHIPPED_PER_CLIENT = 4  # a residual model's two decoders, twice


def _distributed(what):
    """The dask.distributed module; SpreadcodeError when it is not installed."""
    try:
        import distributed
    except ImportError:
        raise SpreadcodeError(f"install spreadcode[dist] for {what} (dask.distributed is "
                              "missing)") from None
    return distributed


@contextmanager
def open_client(workers=None, scheduler=None, timeout=None):
    """A dask.distributed Client for the block, or None when neither ``workers`` nor
    ``scheduler`` is given (the single-process path: Dask is not imported).

    ``workers``: start a LocalCluster of that many worker processes, one thread each,
    closed after the block. Every worker that runs a spreadcode task, on either kind of
    cluster, raises its glibc malloc thresholds for the rest of its life
    (`spreadcode.malloc.raise_thresholds`). ``scheduler``: connect to the
    scheduler at this address (e.g. ``tcp://host:8786``); SpreadcodeError "cannot reach the
    Dask scheduler at ..." after ``timeout`` seconds (default `CONNECT_TIMEOUT`)."""
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise SpreadcodeError("give a number of local workers or a scheduler address, not both")
    distributed = _distributed("--workers/--scheduler")
    with ExitStack() as stack:
        if scheduler is not None:
            try:
                client = distributed.Client(
                    scheduler, set_as_default=False,
                    timeout=CONNECT_TIMEOUT if timeout is None else timeout)
            except (OSError, TimeoutError, ValueError, TypeError) as err:
                raise SpreadcodeError(f"cannot reach the Dask scheduler at {scheduler}: "
                                      f"{err}") from None
        else:
            if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) \
                    or workers < 1:
                raise SpreadcodeError(f"workers must be a positive integer, got {workers!r}")
            import dask

            # One task per worker at a time (Dask's default queues a second one): when a
            # worker dies, Dask counts the death against every task assigned to it, so only
            # the task that ran is blamed, and a task that kills its worker is the one named.
            # No Active Memory Manager: its default policy (ReduceReplicas, every 2 s) drops
            # all but one copy of the decoder `_shipped_once` sends every worker, and each
            # search then fetched it again (0.13-0.18 s of a 1.0-1.4 s search of 1M codes).
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                                  "distributed.scheduler.active-memory-manager.start": False}), \
                    _environment_kept([*dask.config.get("distributed.nanny.pre-spawn-environ"),
                                       "PYTHONHASHSEED"]):
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=int(workers), threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=logging.ERROR))
            client = distributed.Client(cluster, set_as_default=False)
        stack.enter_context(client)
        stack.callback(_forget_shipped, client)
        yield client


def write_shards(client, tasks, write, meta, batch=65536, progress=False):
    """``write(task, catalyzer, meta, batch)`` (`spreadcode.encode.write_shard`) of every
    `spreadcode.encode.ShardTask`, each as one task on the workers of ``client``, with the
    catalyzer of CatalyzerMeta ``meta`` that each worker loads from ``meta.path`` (once per
    process). Returns their `ShardEntry` list in task order; ``progress``: a bar over the
    tasks as they finish.

    When a task fails (or on Ctrl-C), the tasks not started yet are skipped, the running ones
    are awaited, and SpreadcodeError names the failed shard: the first in task order whose own
    code raised, else the first whose workers died (the caller deletes every task's shard)."""
    distributed = _distributed("Dask encoding")
    model = os.path.abspath(meta.path)
    stop = distributed.Event(f"spreadcode-stop-{uuid.uuid4().hex}", client=client)
    tasks = [replace(task, input=os.path.abspath(task.input), path=Path(task.path).absolute())
             for task in tasks]
    futures = [client.submit(_encode_task, write, task, model, meta.sha256, batch, stop.name,
                             pure=False) for task in tasks]
    try:
        for future in _as_completed(distributed, client, futures, progress,
                                    f"encode into {Path(tasks[0].path).parent.name}"
                                    if tasks else "encode"):
            if future.status == "error":
                break
    except BaseException:  # Ctrl-C
        stop.set()
        client.gather(futures, errors="skip")  # awaits the running tasks
        raise
    if any(future.status == "error" for future in futures):
        stop.set()
        client.gather(futures, errors="skip")  # awaits the running tasks
        failed = [index for index, future in enumerate(futures) if future.status == "error"]
        # A task's own error before a worker death (which may blame tasks that only shared
        # the dying worker), then the first shard: the same shard is named on every run.
        index = min(failed, key=lambda index: (
            isinstance(futures[index].exception(), distributed.KilledWorker), index))
        task = tasks[index]
        _result(distributed, futures[index], f"{task.path.name} (rows {task.start}:"
                f"{task.stop} of {os.path.basename(task.input)})", prefix_all=True)
    return [future.result() for future in futures]


def _encode_task(write, task, model, sha256, batch, stop):
    """On a worker: `write_shards`' task, skipped (None) once the Event ``stop`` is set."""
    from distributed import Event

    if Event(stop).is_set():
        return None
    malloc.raise_thresholds()
    catalyzer, meta = _worker_model(model, sha256)
    return write(task, catalyzer, meta, batch)


def _forget_shipped(client):
    """Drop the decoders `_shipped` kept for ``client`` (it is closing)."""
    with _SHIPPED_LOCK:
        _SHIPPED.pop(client, None)


@contextmanager
def _environment_kept(names):
    """The environment variables ``names`` as they were before the block, after it. Dask's
    nannies set theirs (``distributed.nanny.pre-spawn-environ``: OMP_NUM_THREADS=1 and
    friends, meant for the worker processes they spawn) in the process that starts them, and
    torch reads OMP_NUM_THREADS when it first runs an operator: a client that catalyzed and
    re-ranked after starting a LocalCluster did so on one thread (its first 1,000 re-ranked
    queries at 1M codes took 5.9 s of decoding instead of 2.8). A nanny that restarts a
    worker later sets them again, which matters only if torch has not run here by then."""
    kept = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in kept.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker_model(path, sha256):
    """(catalyzer, CatalyzerMeta) of the model file ``path``, loaded once per process;
    SpreadcodeError unless its hash is ``sha256`` (the client's)."""
    key = (path, sha256)
    if key not in _WORKER_MODELS:
        from .catalyzer import load_catalyzer

        catalyzer, meta = load_catalyzer(path)
        if meta.sha256 != sha256:
            raise SpreadcodeError(f"{path}: the model file on the worker has hash "
                                  f"{meta.sha256}, the client's {sha256}")
        _WORKER_MODELS[key] = (catalyzer, meta)
    return _WORKER_MODELS[key]


def map_parts(client, collection, function, *args, progress=False):
    """``function(quantizer, part, offset, *args)`` for every part of ``collection`` holding
    codes (a `container.SpcFile`; offset: codes in earlier parts), each as one task on the
    workers of ``client``, which open the file by path (`_worker_part`). Yields the results in
    completion order (``progress``: a bar over the tasks). Array and object arguments are
    sent to the workers once, not once per task (functions as they are, by name).
    SpreadcodeError naming the part when a task fails."""
    distributed = _distributed("Dask search")
    spec, parts = _part_paths(collection)
    shipped = _shipped(client, args)
    futures, names = [], {}
    for path, payload_sha256, offset in parts:
        future = client.submit(_part_task, function, path, payload_sha256, spec, offset,
                               *shipped, pure=False)
        futures.append(future)
        names[future.key] = path
    for future in _as_completed(distributed, client, futures, progress, "search"):
        yield _result(distributed, future, names[future.key])


def chain_parts(client, collection, function, *args, progress=False):
    """The parts of ``collection`` holding codes split into one run of consecutive parts per
    worker thread of ``client``; in each run, one task per part computes ``function(quantizer,
    part, offset, previous, *args)``, where ``previous`` is the result of the run's task
    before it (None for the first), on the worker that holds it. Yields the result of each
    run's last task in completion order; intermediate results never reach the client. For
    searches whose earlier results make the next part's scan cheaper (a top-k's k-th
    distance bounds it: `spreadcode.search.part_decoded_knn_after`). Runs are asked of the
    workers in address order (`_run_workers`; the scheduler may move a task elsewhere), so a
    worker tends to see the same shards search after search. ``progress``, arguments and
    errors as in `map_parts` (the first failed task of a run is named)."""
    distributed = _distributed("Dask search")
    spec, parts = _part_paths(collection)
    shipped = _shipped(client, args)
    workers = _run_workers(client)
    runs = [run for run in np.array_split(np.arange(len(parts)), len(workers)) if len(run)]
    futures, chain_of = [], {}
    for worker, run in zip(workers, runs):
        placement = {} if worker is None else {"workers": [worker], "allow_other_workers": True}
        previous, chain = None, []
        for number in run:
            path, payload_sha256, offset = parts[number]
            previous = client.submit(_part_task, function, path, payload_sha256, spec, offset,
                                     previous, *shipped, pure=False, **placement)
            chain.append((previous, path))
            chain_of[previous.key] = chain
        futures.extend(future for future, _ in chain)
    for future in _as_completed(distributed, client, futures, progress, "search"):
        chain = chain_of[future.key]
        if future.status != "finished":  # the tasks after a failed one fail with its error
            failed, path = next(((f, path) for f, path in chain if f.status != "finished"),
                                (future, chain[-1][1]))
            _result(distributed, failed, path)
        if future.key == chain[-1][0].key:
            yield _result(distributed, future, chain[-1][1])


def _run_workers(client):
    """One entry per thread of each worker of ``client``, by address (the address repeated
    for a worker of several threads); [None] (anywhere, once one joins) while it has none."""
    return [address for address, threads in sorted(client.nthreads().items())
            for _ in range(threads)] or [None]


def _part_paths(collection):
    """(QuantizerSpec of ``collection``, [(absolute path, payload sha256, offset)] of its
    parts holding codes); SpreadcodeError when a part is held in memory."""
    quantizer = collection.quantizer
    spec = QuantizerSpec(quantizer.kind, quantizer.d, quantizer.param)
    parts = []
    for part, offset in zip(collection.parts, collection.offsets):
        if not part.count:
            continue
        if not isinstance(part, container.SpcFile):
            raise SpreadcodeError("codes held in memory cannot be searched by Dask workers, "
                                  "which read .spc files by path: save them and load the file")
        parts.append((os.path.abspath(part.path), part.header.payload_sha256, int(offset)))
    return spec, parts


def _shipped(client, args):
    """``args`` as tasks take them: plain values and functions as they are; arrays (the
    queries of a batch) sent to every worker now; other objects scattered, and those that
    name their content (a decoder: ``kind`` and ``sha256``, which stand for the object: a
    later decoder with the same ones gets the first one sent) only once per client, kept on
    the cluster for later searches (`_SHIPPED`, the `SHIPPED_PER_CLIENT` most recent; sent
    again when the worker holding it was lost)."""
    shipped = []
    for arg in args:
        if arg is None or isinstance(arg, (bool, int, float, str, dict, types.FunctionType)):
            shipped.append(arg)
        elif isinstance(arg, np.ndarray):
            shipped.append(client.scatter(arg, hash=False, broadcast=True))
        elif isinstance(getattr(arg, "sha256", None), str) and hasattr(arg, "kind"):
            shipped.append(_shipped_once(client, arg))
        else:
            shipped.append(client.scatter(arg, hash=False))
    return shipped


def _shipped_once(client, decoder):
    """The Future of ``decoder`` scattered to every worker of ``client``, kept in `_SHIPPED`
    (see `_shipped`); the entries of closed clients are dropped. A worker that joins later
    fetches it from another once. On a cluster whose scheduler runs Dask's Active Memory
    Manager (its default; `open_client`'s LocalCluster does not) the extra copies are dropped
    within seconds, and each search's tasks fetch it again."""
    key = (type(decoder), decoder.kind, decoder.sha256)
    with _SHIPPED_LOCK:
        for closed in [other for other in _SHIPPED if other.status == "closed"]:
            del _SHIPPED[closed]
        kept = _SHIPPED.setdefault(client, OrderedDict())
        if key in kept and kept[key].status == "finished":
            kept.move_to_end(key)
            return kept[key]
    future = client.scatter(decoder, hash=False, broadcast=True)
    with _SHIPPED_LOCK:
        kept[key] = future
        kept.move_to_end(key)
        while len(kept) > SHIPPED_PER_CLIENT:
            kept.popitem(last=False)
    return future


def _part_task(function, path, payload_sha256, spec, offset, *args):
    """On a worker: the task of `map_parts` and of `chain_parts`."""
    malloc.raise_thresholds()
    quantizer, part = _worker_part(path, payload_sha256, spec)
    return function(quantizer, part, offset, *args)


def _worker_part(path, payload_sha256, spec):
    """(quantizer of ``spec``, the .spc file ``path`` opened memory-mapped without
    re-hashing), the `WORKER_OPEN_FILES` most recent kept open per process;
    SpreadcodeError when the file's payload hash is no longer ``payload_sha256``."""
    key = (path, payload_sha256, spec)
    if key in _WORKER_PARTS:
        _WORKER_PARTS.move_to_end(key)
        return _WORKER_PARTS[key]
    spc = container.open_spc(path, verify=False)
    if spc.header.payload_sha256 != payload_sha256:
        raise SpreadcodeError(f"{path}: changed since it was opened (payload checksum "
                              f"{spc.header.payload_sha256}, expected {payload_sha256})")
    _WORKER_PARTS[key] = (spec.quantizer(), spc)
    while len(_WORKER_PARTS) > WORKER_OPEN_FILES:
        _WORKER_PARTS.popitem(last=False)
    return _WORKER_PARTS[key]


def search_token():
    """A token naming one search (`worker_decoded_blocks`): unique across clients."""
    return uuid.uuid4().hex


def worker_decoded_blocks(quantizer, part, offset, decoder, block, budget=None, search=None):
    """The decoded codes of the .spc file ``part`` (`spreadcode.search.kept_then_decoded`):
    what this process kept of them, then the rest decoded block by block. Kept for the next
    query batches and searches with the same decoder, up to ``budget`` bytes per worker
    process (None: WORKER_DECODED_BYTES): the first rows of a shard, or all of it, as one
    array of ``decoder.row_dtype`` (`spreadcode.search.decoded_part`).

    A search (``search``: its `search_token`) visits its shards in the same order every
    batch (`chain_parts`), so what it kept early must stay: least-recently-used eviction
    would evict each shard just before its next use and never hit. So a shard is kept only
    in the room left once shards that no task of this search has used are evicted (least
    recently used first, and only if that frees room for a block); shards this search uses
    stay (with ``search`` None every shard may go). A kept shard is decoded again, and kept
    anew, when it no longer fits the budget or more of it now would. Keyed by path, payload
    checksum, decoder kind and sha256, and block, so a changed file or another decoder
    decodes anew. ``offset`` is unused (the signature of
    `spreadcode.search.part_decoded_knn`'s ``blocks_of``)."""
    from .search import decoded_part, kept_rows_of_part, kept_then_decoded

    budget = WORKER_DECODED_BYTES if budget is None else budget
    row_bytes = decoder.row_dtype.itemsize
    key = (os.path.abspath(part.path), part.header.payload_sha256, decoder.kind,
           decoder.sha256, block)

    def rows_beside(held):
        """The rows of this shard to keep beside ``held`` bytes of others."""
        return kept_rows_of_part(part.count, (budget - held) // row_bytes, block)

    with _WORKER_DECODED_LOCK:
        entry = _WORKER_DECODED.pop(key, None)
        held = _decoded_bytes()
        if entry is not None and len(entry[0]) == rows_beside(held) > 0:
            _WORKER_DECODED[key] = (entry[0], search)
            return kept_then_decoded(quantizer, part, decoder, block, entry[0])
        evictable = [old for old, (_, used_by) in _WORKER_DECODED.items()
                     if used_by != search or search is None]
        freeable = sum(_WORKER_DECODED[old][0].nbytes for old in evictable)
        if rows_beside(held - freeable):
            for old in evictable:
                if held + part.count * row_bytes <= budget:
                    break
                held -= _WORKER_DECODED.pop(old)[0].nbytes
        keep = rows_beside(held)
    if not keep:
        return kept_then_decoded(quantizer, part, decoder, block, None)
    kept = decoded_part(quantizer, part, decoder, block, keep)
    with _WORKER_DECODED_LOCK:  # unless another thread took the room meanwhile
        if _decoded_bytes() + kept.nbytes <= budget:
            _WORKER_DECODED[key] = (kept, search)
    return kept_then_decoded(quantizer, part, decoder, block, kept)


def _decoded_bytes():
    """Bytes of the decoded shards this worker keeps (the caller holds the lock)."""
    return sum(array.nbytes for array, _ in _WORKER_DECODED.values())


def verify_parts(client, collection):
    """Recompute the payload checksum of every .spc file of ``collection``, one task per file
    on the workers of ``client``; SpreadcodeError (naming the file) at the first mismatch."""
    distributed = _distributed("Dask verification")
    futures = {client.submit(_verify_task, os.path.abspath(part.path), pure=False): part.path
               for part in collection.parts}
    for future in _as_completed(distributed, client, list(futures)):
        _result(distributed, future, futures[future])


def _verify_task(path):
    """On a worker: `verify_parts`' task."""
    container.open_spc(path, verify=True)


def _as_completed(distributed, client, futures, progress=False, desc=None):
    """``futures`` of ``client`` as they finish, with a tqdm bar over them when
    ``progress``."""
    done = distributed.as_completed(futures, loop=client.loop)
    if progress:
        from tqdm import tqdm

        done = tqdm(done, total=len(futures), unit="task", desc=desc, leave=False)
    return done


def _result(distributed, future, where, prefix_all=False):
    """The result of a finished ``future``; its error as one SpreadcodeError line naming
    ``where`` (a SpreadcodeError already names its file, so it is prefixed only with
    ``prefix_all``)."""
    try:
        return future.result()
    except SpreadcodeError as err:
        if not prefix_all:
            raise
        raise SpreadcodeError(f"{where}: {err}") from err
    except distributed.KilledWorker as err:
        raise SpreadcodeError(f"{where}: the Dask workers running it died ({err})") from err
    except Exception as err:  # noqa: BLE001 -- any worker failure becomes one line
        raise SpreadcodeError(f"{where}: {type(err).__name__}: {err}") from err
