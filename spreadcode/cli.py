"""The ``spreadcode`` command line: parses, calls one library function, prints.

Every command is a thin wrapper over a documented function (see ARCHITECTURE.md). Errors a
user can cause come out as one line on stderr and exit code 1; ``--debug`` shows the
traceback instead. Heavy modules (torch) are imported inside the commands that need them,
so ``spreadcode info`` starts instantly.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import click

from . import malloc
from .errors import SpreadcodeError

STORE_OPTION = click.option(
    "--store", type=click.Path(file_okay=False), default=None,
    help="Model store directory [default: $SPREADCODE_HOME/models or ~/.spreadcode/models].")
SEED_OPTION = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed of every random choice: the same seed, the same result.")
QUIET_OPTION = click.option("-q", "--quiet", is_flag=True,
                            help="No progress bars (they are only drawn on a terminal anyway).")


def _dask_options(command):
    """--workers and --scheduler (or $SPREADCODE_SCHEDULER): where per-shard tasks run."""
    command = click.option(
        "--scheduler", metavar="ADDRESS", envvar="SPREADCODE_SCHEDULER", show_envvar=True,
        default=None, help="Run the per-shard tasks on the Dask cluster of this scheduler "
        "(e.g. tcp://host:8786); its workers must see the same paths.")(command)
    return click.option(
        "--workers", type=click.IntRange(min=1), default=None, metavar="N",
        help="Run the per-shard tasks on a local Dask cluster of N worker processes (one "
             "thread each; overrides $SPREADCODE_SCHEDULER). Without --workers or "
             "--scheduler everything runs in this process, with no Dask start-up cost. "
             "Needs spreadcode[dist].")(command)


def _scheduler(workers, scheduler):
    """The scheduler address to use: none when --workers is given (it overrides
    $SPREADCODE_SCHEDULER); both given on the command line is a usage error."""
    if workers is None or scheduler is None:
        return scheduler
    source = click.get_current_context().get_parameter_source("scheduler")
    if source is not click.core.ParameterSource.ENVIRONMENT:
        raise click.UsageError("--workers starts a local cluster, --scheduler uses an "
                               "existing one: give one of them")
    return None


COLUMN_OPTION = click.option(
    "--column", default=None, metavar="NAME",
    help="Parquet inputs: the vector column, a list or fixed_size_list of numbers [default: "
         "the only list column]; .h5 inputs: the dataset.")
ID_COLUMN_OPTION = click.option(
    "--id-column", default=None, metavar="NAME",
    help="Parquet inputs: the integer column holding each vector's int64 id (instead of "
         "--ids).")
BEAM_OPTION = click.option(
    "--beam", type=click.IntRange(min=1, max=256), default=1, show_default=True,
    help="Residual models: keep this many partial codes per vector over the last stages "
         "of encoding (1 + log2 of it; the first stages take the nearest point), each "
         "extended by the stage's 2 nearest lattice points and kept by reconstruction error. "
         "Better codes for more time (wordnet text, BENCHMARKS.md lever 33: beam 2 gives "
         "+1.0 R@1 and +1.9 R@10 for 2.5x the encoding time, beam 4 +2.3 / +2.9 for 5x, "
         "beam 8 +3.5 / +3.3 for 11x). 1: the nearest point per stage.")
PRECISION_OPTION = click.option(
    "--precision", type=click.Choice(["auto", "float32"]), default="auto", show_default=True,
    help="Residual models' arithmetic. auto: on a CPU, encoding and the full "
         "decoder in int8 (one scale per row of activations and per output channel of "
         "weights, exact integer sums); other matrix products in bfloat16 where the CPU or "
         "GPU multiplies it natively (AVX512-BF16, AMX), float32 elsewhere: encoding 3.6x "
         "and decoding 2.6x or more faster than float32 with the same recall (the codes "
         "that change are near-ties; BENCHMARKS.md levers 57, 58, 63, 64). float32: codes "
         "and distances that do not depend on the machine's int8 and bfloat16 support.")


def _progress(quiet):
    """Draw progress bars only for a person watching a terminal."""
    return not quiet and sys.stderr.isatty()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds exactly like Ctrl-C:
    temporary outputs are deleted, training keeps its best checkpoint."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Terminated()


@contextmanager
def _sigterm_as_interrupt():
    """Within the block, SIGTERM (kill, timeout, service managers) raises `_Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Cli(click.Group):
    """A click group that turns exceptions into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            with _sigterm_as_interrupt():
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            _exit_interrupted(ctx, exc)
        except Exception as exc:  # noqa: BLE001 -- the CLI's last line of defence
            interrupt = _interruption(exc)
            if interrupt is not None:
                _exit_interrupted(ctx, interrupt)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"spreadcode: error: {_one_line(exc)}", err=True)
            ctx.exit(1)


def _interruption(exc):
    """The KeyboardInterrupt (Ctrl-C, or SIGTERM's `_Terminated`) behind ``exc``, or None. A
    signal handler's exception raised while a C function runs (``str`` of a path, say)
    reaches Python as a SystemError caused by it: the run was interrupted all the same."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _exit_interrupted(ctx, exc):
    """Say that the run was interrupted or terminated, and exit 128 + the signal's number."""
    terminated = isinstance(exc, _Terminated)
    click.echo(f"spreadcode: {'terminated' if terminated else 'interrupted'}", err=True)
    ctx.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


def _one_line(exc):
    """The message of ``exc`` on one line, prefixed by its type unless it is ours."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (SpreadcodeError, OSError)):
        return message
    return f"{type(exc).__name__}: {message} (run with --debug for the traceback)"


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="spreadcode")
@click.pass_context
def main(ctx, debug):
    """spreadcode: compress embedding vectors into compact, codebook-free codes and search them.

    \b
    Typical session:
      spreadcode train learn.fvecs --bits 64        # learn a catalyzer (prints its hash)
      spreadcode encode base.fvecs -o db.spc        # compress the database
      spreadcode encode a.fvecs b.fvecs -o db/ --shard-size 1000000   # or a collection
      spreadcode add db/ c.fvecs                    # append to a collection
      spreadcode search db.spc queries.fvecs -k 100 --gt groundtruth.ivecs
      spreadcode info db.spc

    The model codes vectors on fixed spherical lattices S(d, r²) (no codebook: the .spc
    header alone turns a code into lattice points). By default it is a residual model: a few
    lattice stages, each coding what the previous ones missed, with decoders learnt together
    with the encoder (Sablayrolles et al., ICLR 2019; Amara et al., 2021); `--quantizer
    lattice` trains the paper's catalyzer with one sphere instead.
    """
    ctx.ensure_object(dict)["debug"] = debug
    malloc.raise_thresholds()  # this process's batches reuse their buffers (spreadcode.malloc)


@main.command()
@click.argument("learn_file", required=False, type=click.Path(dir_okay=False))
@click.option("--bits", type=int, default=64, show_default=True,
              help="Code size per vector. Residual: one 16-bit S(12, 6) stage per 16 bits "
                   "(+ an 8-bit S(6, 4) stage), any multiple of 8; lattice: d_out and r² from "
                   "the table in `spreadcode.training` (16, 32, 64, 128, 256).")
@click.option("--quantizer", type=click.Choice(["residual", "lattice", "sign"]),
              default="residual", show_default=True,
              help="residual: lattice stages trained as an auto-encoder with their decoders "
                   "(encoder MLPs 512 wide, decoders 1,024: the widths of best held-out error; "
                   "AdamW with weight decay 1 and encoder inputs noised by 0.2 RMS coordinate, against "
                   "over-fitting: 5 % and 3 % lower held-out error; on data of one norm a term "
                   "that keeps decoded vectors from crowding denser regions than their own "
                   "vectors, which makes them false nearest neighbours (wordnet R@1 + 0.8 over "
                   "four seeds, pypi + 0.7 over two runs, raw 384-d + 0.3); inputs wider than 128 "
                   "dimensions read through a learned projection to 128: on raw 384-d "
                   "embeddings 1.35x the encoding rate for 0.3 R@1 less), "
                   "then a small shortlist decoder distilled from them for fast search (best "
                   "recall: BENCHMARKS.md, 'Issue #14 levers'); lattice: the paper's "
                   "catalyzer + one sphere; sign: catalyzer + sign bits.")
@click.option("--dout", type=int, default=None, help="Output dimension of the catalyzer "
              "(overrides the --bits table; with a lattice also give --r2). At 64 bits, "
              "--dout 32 --r2 36 beats the default 24 on sentence embeddings but not on SIFT "
              "(BENCHMARKS.md).")
@click.option("--r2", type=int, default=None, help="Squared radius of the lattice sphere.")
@click.option("--lambda", "lam", default=None, metavar="L|auto",
              help="KoLeo weight (lattice, sign); default depends on d_out; 'auto' "
                   "cross-validates a grid.")
@click.option("--epochs", type=int, default=None,
              help="Training epochs [default: residual 50, fewer on learn sets over 80k "
                   "vectors (4M training vectors in all: more over-fit), lattice/sign 30 on "
                   "CPU, 100 on GPU; fewer if they would not fit in the time budget].")
@click.option("--time-budget", type=float, default=None, metavar="MIN",
              help="Stop after this many minutes (keeps the best checkpoint) [default: 14; "
                   "residual: 14 per 60,000 training vectors, at least 14].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@SEED_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the model exactly to this path.")
@STORE_OPTION
@QUIET_OPTION
def train(learn_file, bits, quantizer, dout, r2, lam, epochs, time_budget, device, seed,
          output, store, quiet):
    """Train a model on LEARN_FILE (the bundled sample if omitted).

    LEARN_FILE is .fvecs, .bvecs, .npy or an ann-benchmarks .h5 (its `train` set). Part of it
    is held out for validation (residual: a tenth, at most 2,000 vectors): the best checkpoint
    (residual: lowest held-out reconstruction error; lattice/sign: best validation
    1-recall@10) is kept and saved into the model store under its SHA-256, and the report
    gives its validation recall. Ctrl-C stops early and keeps the best model. Default
    training of ~50k vectors takes ~9-14 min on 2 CPU cores; a 14-minute budget stops it
    earlier on slower CPUs, with its schedule annealed (23 of the 50 epochs on an AVX2-only
    first-generation AMD EPYC: 2 points less R@1 in one wordnet run); `--epochs 50` trains
    them all. A residual model's budget grows with learn sets of more than 60,000 training
    vectors (120k: ~28 min), so that they run as many epochs as a smaller set would, up to
    4M training vectors in all; `--time-budget` fixes it.
    When every learn vector has the same norm (L2-normalised embeddings, SIFT), a residual
    model's decoders put what they decode back on that sphere, which ranks neighbours better
    than the shrunken MSE-optimal vectors; the report says which. A residual model's search
    re-ranks its shortlist by the full decoder's distance plus a weight times the shortlist
    decoder's: the weight of their least-squares mix on the held-out vectors (their errors are
    partly independent; 0.06-0.34 on text and SIFT), reported too.
    """
    from .commands import train_command

    if lam is not None and lam != "auto":
        try:
            lam = float(lam)
        except ValueError:
            raise click.BadParameter("expected a number or 'auto'", param_hint="--lambda")
    summary = train_command(
        learn_file, bits=bits, quantizer=quantizer, dout=dout, r2=r2, lam=lam,
        epochs=epochs, time_budget_min=time_budget, device=device, output=output,
        store=store, seed=seed, progress=_progress(quiet))
    click.echo(summary.report())


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="INPUT...")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The .spc file to write (written whole or not at all), or with "
                   "--shard-size a new collection directory.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Write a collection directory of .spc shards of at most N vectors "
                   "(a shard never spans two inputs) and its manifest.")
@click.option("--ids", type=click.Path(dir_okay=False), default=None,
              help="With --shard-size: one unique int64 id per vector of all INPUTs, in "
                   "order (.ivecs/.npy/.h5) [default: 0, 1, ...].")
@ID_COLUMN_OPTION
@COLUMN_OPTION
@click.option("--model", default="latest", show_default=True,
              help="Catalyzer: hash (or unique prefix), path, or 'latest'.")
@click.option("--batch", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Vectors per batch; bounds peak memory.")
@BEAM_OPTION
@PRECISION_OPTION
@_dask_options
@STORE_OPTION
@QUIET_OPTION
def encode(inputs, output, shard_size, ids, id_column, column, model, batch, beam, precision,
           workers, scheduler, store, quiet):
    """Compress INPUT (.fvecs/.bvecs/.npy/.h5/.parquet) into a .spc file, or INPUT... into a
    collection directory (-o DIR --shard-size N), one shard per task: in this process, or
    on Dask workers with --workers / --scheduler (each writes its shards; the manifest is
    written last)."""
    from .commands import encode_command

    scheduler = _scheduler(workers, scheduler)
    if shard_size is not None and output.lower().endswith(".spc"):
        raise click.UsageError("--shard-size writes a collection directory, not a .spc file")
    if shard_size is None and (len(inputs) > 1 or ids is not None or id_column is not None
                               or workers is not None or scheduler is not None):
        raise click.UsageError("several inputs, --ids, --id-column, --workers or --scheduler "
                               "need a collection directory: -o DIR --shard-size N")
    if ids is not None and id_column is not None:
        raise click.UsageError("--ids and --id-column exclude each other")
    summary = encode_command(inputs, output, shard_size=shard_size, ids=ids,
                             id_column=id_column, column=column, model=model, store=store,
                             batch=batch, progress=_progress(quiet), workers=workers,
                             scheduler=scheduler, beam=beam, precision=precision)
    if shard_size is not None:
        click.echo(_collection_line(summary))
        return
    click.echo(f"wrote {summary.output}: {summary.count} codes, {summary.quantizer}, "
               f"{summary.bits} bits/vector, {summary.output_bytes} bytes "
               f"(compression {summary.compression_ratio:.1f}x vs float32), "
               f"catalyzer {summary.catalyzer_sha256[:12]}")


def _collection_line(summary):
    """The line `encode` and `add` print for a `spreadcode.encode.CollectionSummary`."""
    return (f"wrote {summary.added} codes in {summary.shards_added} shards to "
            f"{summary.output} ({summary.count} codes in {summary.shards} shards), "
            f"{summary.quantizer}, {summary.bits} bits/vector, {summary.output_bytes} bytes "
            f"(compression {summary.compression_ratio:.1f}x vs float32), "
            f"catalyzer {summary.catalyzer_sha256[:12]}")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False),
                metavar="INPUT...")
@click.option("--ids", type=click.Path(dir_okay=False), default=None,
              help="One int64 id per vector of all INPUTs, in order, none already in the "
                   "collection [default: consecutive after its largest id].")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Vectors per new shard [default: the collection's].")
@ID_COLUMN_OPTION
@COLUMN_OPTION
@click.option("--model", default=None,
              help="The collection's catalyzer (path or hash) [default: from the store].")
@click.option("--batch", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Vectors per batch; bounds peak memory.")
@BEAM_OPTION
@PRECISION_OPTION
@_dask_options
@STORE_OPTION
@QUIET_OPTION
def add(directory, inputs, ids, shard_size, id_column, column, model, batch, beam, precision,
        workers, scheduler, store, quiet):
    """Append INPUT... to the collection DIRECTORY as new shards.

    The manifest is replaced only once every new shard is written, so an error, Ctrl-C or
    SIGTERM leaves the collection as it was (with --workers / --scheduler too: the running
    tasks are awaited and their shards deleted).
    """
    from .commands import add_command

    scheduler = _scheduler(workers, scheduler)
    if ids is not None and id_column is not None:
        raise click.UsageError("--ids and --id-column exclude each other")
    summary = add_command(directory, inputs, ids=ids, id_column=id_column, column=column,
                          shard_size=shard_size, model=model, store=store, batch=batch,
                          progress=_progress(quiet), workers=workers, scheduler=scheduler,
                          beam=beam, precision=precision)
    click.echo(_collection_line(summary))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(),
                metavar="DB.spc|DIR... QUERIES")
@click.option("-k", type=click.IntRange(min=1), default=None,
              help="Number of neighbours per query [default: 10]; at most the number of codes "
                   "(a larger k is capped, with a note on stderr).")
@click.option("--radius", type=click.FloatRange(min=0), default=None,
              help="Range search: every code within this distance (instead of -k).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Results file: .ivecs (+ .distances.fvecs), .npy, .h5; TSV on stdout "
                   "if omitted.")
@click.option("--gt", type=click.Path(dir_okay=False), default=None,
              help="Ground-truth ids (.ivecs/.npy/.h5); prints 1-recall@1/10/100.")
@click.option("--model", default=None,
              help="Catalyzer to use [default: the one named in the .spc header].")
@click.option("--decoder", default=None,
              help="Learned decoder (hash, prefix, path, 'latest'): re-rank a shortlist by "
                   "the exact distance between the raw query and the decoded vectors. "
                   "Residual models have their own.")
@click.option("--rerank", type=click.IntRange(min=0), default=None,
              help="Shortlist size for re-ranking (with a decoder or a residual model) "
                   "[default: max(10·k, 100); residual models max(2·k, 50), or max(10·k, 1000) for "
                   "models older than their MLP shortlist decoder]; 0: no re-ranking.")
@click.option("--decode-all", is_flag=True,
              help="With a decoder or a residual model: rank every code by its decoded "
                   "vector (for sign codes, the alternative to Hamming).")
@click.option("--hamming", is_flag=True,
              help="Sign codes: rank by Hamming distance to the query's sign code.")
@PRECISION_OPTION
@_dask_options
@STORE_OPTION
@QUIET_OPTION
def search(paths, k, radius, output, gt, model, decoder, rerank, decode_all, hamming,
           precision, workers, scheduler, store, quiet):
    """Search DB.spc [DB2.spc ...] for the vectors of QUERIES (the last path).

    Several .spc files and collection directories are searched as one collection with
    global ids (file order; a collection's shards store their ids).
    Distances are squared L2 between the catalyzed query and the decoded codes on the unit
    sphere; with --decoder, and always for a residual model's codes, squared L2 in input
    space between the raw query and the decoded vectors. Results go to --output, or to
    stdout as TSV (query, rank, id, distance). With --workers / --scheduler, each
    (file or shard, query batch) is one Dask task; the results are identical.
    """
    from .commands import search_command

    if len(paths) < 2:
        raise click.UsageError("give at least one .spc file and a queries file")
    if k is not None and radius is not None:
        raise click.UsageError("-k and --radius exclude each other")
    if decoder is not None and (radius is not None or hamming):
        raise click.UsageError("--decoder works with -k searches without --hamming")
    if gt is not None and radius is not None:
        raise click.UsageError("--gt needs -k (recall of a range search is not defined)")
    *db_paths, queries = paths
    report = search_command(db_paths, queries, k=k, radius=radius, output=output, gt=gt,
                            model=model, decoder=decoder, rerank=rerank, decode_all=decode_all,
                            hamming=hamming, precision=precision, store=store,
                            stream=sys.stdout, workers=workers,
                            scheduler=_scheduler(workers, scheduler),
                            progress=_progress(quiet))
    note = report.note()
    if note:
        click.echo(f"spreadcode: note: {note}", err=True)
    for written in report.written:
        click.echo(f"wrote {written}", err=gt is None)
    if report.recalls is not None:
        click.echo("  ".join(f"1-recall@{kk}={value:.4f}" for kk, value in report.recalls.items()))


@main.command("train-decoder")
@click.argument("learn_file", type=click.Path(dir_okay=False))
@click.option("--model", default="latest", show_default=True,
              help="Catalyzer whose codes the decoder reads (hash, prefix, path, 'latest').")
@click.option("--kind", type=click.Choice(["linear", "mlp"]), default="mlp", show_default=True,
              help="Closed-form least squares, or the same plus an MLP correction.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="MLP training epochs [default: see spreadcode.decoders].")
@SEED_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the decoder exactly to this path.")
@STORE_OPTION
@QUIET_OPTION
def train_decoder(learn_file, model, kind, epochs, seed, output, store, quiet):
    """Learn a decoder from a catalyzer's codes back to the input space (Amara et al. 2021).

    LEARN_FILE is encoded with the catalyzer and its quantizer; the decoder learns to
    reconstruct the original vectors from the codes. Existing .spc files need no change:
    use it with `spreadcode search ... --decoder HASH`. Reports the held-out squared error
    against the best linear map.
    """
    from .commands import train_decoder_command

    summary = train_decoder_command(learn_file, model=model, kind=kind, output=output,
                                    store=store, epochs=epochs, seed=seed,
                                    progress=_progress(quiet))
    click.echo(summary.report())


@main.command("fine-tune")
@click.argument("learn_file", type=click.Path(dir_okay=False))
@click.option("--model", default="latest", show_default=True,
              help="Catalyzer to start from (hash, prefix, path, 'latest'); it is not modified.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Joint catalyzer + decoder epochs [default: see spreadcode.finetune].")
@SEED_OPTION
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the new catalyzer exactly to this path.")
@STORE_OPTION
@QUIET_OPTION
def fine_tune(learn_file, model, epochs, seed, output, store, quiet):
    """Fine-tune a catalyzer with a decoder so its codes reconstruct the input better.

    Trains the catalyzer and an MLP decoder together, through the fixed quantizer, on the
    reconstruction error of LEARN_FILE (held-out part kept for choosing the epoch), and saves
    a NEW catalyzer (printed hash); the original stays as it is. Its codes differ: encode with
    it, then run `spreadcode train-decoder` for it and search with `--decoder`.
    """
    from .commands import fine_tune_command

    summary = fine_tune_command(learn_file, model=model, output=output, store=store, seed=seed,
                                epochs=epochs, progress=_progress(quiet))
    click.echo(summary.report())


@main.command()
@click.argument("spc_file", type=click.Path(), metavar="DB.spc|DIR")
@STORE_OPTION
def info(spc_file, store):
    """Show the header of a .spc file, or the summary of a collection directory, the
    checksum status and the matching models."""
    from .commands import info_command

    report = info_command(spc_file, store_path=store)
    for key, value in report.rows:
        click.echo(f"{key + ':':<22}{value}")
    report.raise_if_corrupt()


@main.command()
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs for the demo model [default: about a minute].")
@QUIET_OPTION
def demo(epochs, quiet):
    """Train, encode and search the bundled sample; print recall and compression."""
    from .commands import demo_command

    report = demo_command(epochs=epochs, progress=_progress(quiet))
    click.echo(report.text())


if __name__ == "__main__":  # pragma: no cover
    main()
