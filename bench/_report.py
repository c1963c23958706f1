"""Turning a run's results (one JSON-able dict) into results.json, results.md and PNG figures.

The results dict has one entry per section that ran (``table1``, ``table2``, ``figure5``,
``figure3``, ``appendixc``, ``decoders``, ``quality``), each stamped with the command and date
of the run that made it, so re-running one section with ``--only`` updates it and keeps the
others.
"""
import importlib.util
import json
import os
import platform
from pathlib import Path

import numpy as np

FIGURE5_PNG = "figure5_recall_vs_bits.png"
FIGURE3_PNG = "figure3_neighbor_distances.png"
APPENDIXC_PNG = "appendixc_range_search.png"


def matplotlib_available():
    """True when the figures can be drawn."""
    return importlib.util.find_spec("matplotlib") is not None


def machine_description():
    """CPU model, cores, OS and library versions: {name: str}."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "torch": torch.__version__}
    for optional in ("faiss", "matplotlib"):
        try:
            versions[optional] = __import__(optional).__version__
        except ImportError:
            versions[optional] = "not installed"
    omp = ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("OMP_"))
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads()),
            "os": f"{platform.system()} {platform.release()}", "openmp": omp or "defaults",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items())}


def load_previous(folder):
    """The results dict of an earlier run in ``folder``, or {} when there is none."""
    path = Path(folder) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(folder, results):
    path = Path(folder) / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.1f}"


def _seconds(value):
    return "" if value is None else f"{value:.1f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _stamp(section):
    return [f"*Run {section['date']}: `{section['command']}`*", ""]


def _table1_md(section):
    header = ["method", "bits", "R@1", "R@10", "R@100", "train s", "encode s", "search s",
              "note"]
    rows = [[r["method"], r.get("bits") or "", *(_pct(r["recall"].get(k)) for k in ("1", "10", "100")),
             _seconds(r.get("train_s")), _seconds(r.get("encode_s")),
             _seconds(r.get("search_s")), r["note"]]
            for r in section["rows"]]
    return ["## Table 1 analogue: 64 bits per vector", "", *_stamp(section),
            "1-recall@1/10/100 in %; times in seconds for training on learn, encoding all of "
            "base, searching all queries (exhaustive, asymmetric unless marked Hamming).", "",
            *_table(header, rows), ""]


def _sweep_md(title, section, intro):
    bits = section["bits"]
    notes = []
    rows = []
    for row in section["rows"]:
        cells = []
        for b in bits:
            cell = row["cells"][str(b)]
            cells.append(_pct(cell["recall"].get("10") if cell["recall"] else None))
            if cell["note"]:
                notes.append(f"- {row['method']} at {b} bits: {cell['note']}")
        rows.append([row["method"], *cells])
    return [title, "", *_stamp(section), intro, "",
            *_table(["method", *(f"{b} bits" for b in bits)], rows), "", *notes,
            *([""] if notes else [])]


QUALITY_COLUMNS = (("R@1", "1", max), ("R@10", "10", max), ("R@100", "100", max),
                   ("train s", "train_s", min), ("encode s", "encode_s", min),
                   ("search s", "search_s", min))


def _quality_value(cell, key):
    """A quality cell's column ``key`` as shown in the table (rounded), or None for n/a;
    comparing shown values makes every tie for the best bold."""
    if not cell["recall"]:
        return None
    if key in cell["recall"]:
        return round(100 * cell["recall"][key], 1)
    return round(cell[key], 1)


def _quality_rows(section, bits):
    """Table rows for one code size, the best value of each column in bold."""
    cells = [(row["method"], row["cells"][str(bits)]) for row in section["rows"]]
    best = {}
    for _, key, pick in QUALITY_COLUMNS:
        values = [v for v in (_quality_value(cell, key) for _, cell in cells) if v is not None]
        best[key] = pick(values) if values else None
    rows = []
    for method, cell in cells:
        size = str(bits) if cell["bits"] in (None, bits) else f"{bits} (uses {cell['bits']})"
        shown = []
        for _, key, _ in QUALITY_COLUMNS:
            value = _quality_value(cell, key)
            text = "n/a" if value is None else f"{value:.1f}"
            shown.append(f"**{text}**" if value is not None and value == best[key] else text)
        rows.append([size, method, cell.get("code") or "", *shown])
    return rows


def _grouped_notes(section):
    """One line per method and distinct note, naming the code sizes it applies to."""
    lines = []
    for row in section["rows"]:
        sizes_by_note = {}
        for b in section["bits"]:
            note = row["cells"][str(b)]["note"]
            if note:
                sizes_by_note.setdefault(note, []).append(str(b))
        lines += [f"- {row['method']} at {', '.join(sizes)} bits: {note}"
                  for note, sizes in sizes_by_note.items()]
    return lines


def _quality_md(section):
    bits = section["bits"]
    ds = section["dataset"]
    rows = [row for b in bits for row in _quality_rows(section, b)]
    notes = _grouped_notes(section)
    header = ["bits", "method", "code", *(title for title, _, _ in QUALITY_COLUMNS)]
    return [f"## Quality at {'/'.join(map(str, bits))} bits", "", *_stamp(section),
            f"Dataset `{ds['name']}`: learn {ds['n_learn']:,}, base {ds['n_base']:,}, "
            f"queries {ds['n_query']:,}. spreadcode default = `Index.train(learn, bits=b)`, "
            "`add(base)`, `search(query, k=100)` with every other option at the library's "
            "default; the faiss peers use exactly the same bits per vector (RQ / LSQ: one of "
            "the bytes is the quantized norm). The rows \"spreadcode default, ...\" after the "
            "peers are the ablation: the default row's model with one thing changed in how it "
            "encodes (`add(base, beam=B)`) or searches (decoded off the learn set's sphere; "
            "the shortlist decoder's ranking alone, `rerank=0`), so their training seconds are "
            "the default's. 1-recall@1/10/100 in %; seconds to train on "
            "learn, encode all of base, search all queries (exhaustive). **Bold**: the best "
            "of the column at that code size (highest recall, fewest seconds).", "",
            *_table(header, rows), "", *notes, *([""] if notes else [])]


def _figure3_md(section):
    rows = [[space, f"{s['mean_first']:.3f}", f"{s['mean_kth']:.3f}",
             f"{100 * s['prob_first_exceeds_kth']:.1f}%"]
            for space, s in section["spaces"].items()]
    k = section["k"]
    return ["## Figure 3 / §3.3: distance to the 1st and 100th neighbour", "", *_stamp(section),
            f"Queries against base. P = probability that a query's 1st-neighbour distance "
            f"exceeds another query's {k}th-neighbour distance (paper, Deep1M: 20.8% before, "
            f"5.0% after the catalyzer). Catalyzer: {section['model']}.", "",
            f"![neighbour distances]({FIGURE3_PNG})", "",
            *_table(["space", "mean d_1", f"mean d_{k}", "P(d_1(x) > d_k(y))"], rows), ""]


def _appendixc_md(section):
    spaces = list(section["spaces"])
    rows = []
    for i, target in enumerate(section["target_recalls"]):
        row = [f"{100 * target:.0f}%"]
        for space in spaces:
            point = section["spaces"][space][i]
            row += [f"{point['epsilon']:.3f}", _pct(point["recall"]),
                    f"{point['mean_results']:.1f}"]
        rows.append(row)
    header = ["target recall"]
    for space in spaces:
        header += [f"{space} ε", f"{space} recall %", f"{space} results/query"]
    return ["## Appendix C: range search with one global ε", "", *_stamp(section),
            "ε is set so that the target share of queries have their true (input-space) "
            "nearest neighbour within ε; results/query is the mean number of base vectors "
            "returned (paper: 80% recall needs ~700 results in input space vs ~200 after the "
            f"catalyzer). Catalyzer: {section['model']}.", "",
            f"![range search]({APPENDIXC_PNG})", "", *_table(header, rows), ""]


def _decoders_md(section):
    from bench.decoders import markdown  # torch-heavy: only when the section is rendered
    return markdown(section)


SECTION_MARKDOWN = {
    "table1": _table1_md,
    "table2": lambda s: _sweep_md(
        "## Table 2 analogue: binary codes, 1-recall@10 (%)", s,
        "LSH and ITQ rank by Hamming distance (faiss); catalyzer + sign is searched both "
        "asymmetrically (catalyzed query against the signs) and by Hamming distance."),
    "figure5": lambda s: _sweep_md(
        "## Figure 5 analogue: 1-recall@10 (%) vs bits per vector", s,
        f"![recall vs bits]({FIGURE5_PNG})\n\nLattice rows use the spherical lattice "
        "S(d_out, r²) whose code size is closest to the target without exceeding it."),
    "figure3": _figure3_md,
    "appendixc": _appendixc_md,
    "decoders": _decoders_md,
    "quality": _quality_md,
}


def write_markdown(folder, results):
    """results.md: the dataset, machine and every section present in ``results``."""
    ds, machine = results["dataset"], results["machine"]
    lines = [f"# spreadcode benchmark: {ds['name']}", "",
             f"Dataset: `{ds['source']}`: learn {ds['n_learn']:,}, base {ds['n_base']:,}, "
             f"queries {ds['n_query']:,}, d = {ds['d']}.", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores "
             f"({machine['torch_threads']} torch threads; OpenMP: {machine['openmp']}), "
             f"{machine['os']}; "
             f"{machine['versions']}.", ""]
    for name, render in SECTION_MARKDOWN.items():
        if name in results:
            lines += render(results[name])
    path = Path(folder) / "results.md"
    path.write_text("\n".join(lines))
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_figure5(folder, section):
    """Recall@10 vs the bits each code really uses (a lattice sphere may fall short of the
    target), one line per method; n/a points are skipped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in section["rows"]:
        cells = [row["cells"][str(b)] for b in section["bits"]]
        points = [(cell["bits"], cell["recall"]["10"]) for cell in cells if cell["recall"]]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], marker="o", label=row["method"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(section["bits"], [str(b) for b in section["bits"]])
    ax.set_xlabel("bits per vector")
    ax.set_ylabel("1-recall@10 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(folder) / FIGURE5_PNG, dpi=120)
    plt.close(fig)


def plot_figure3(folder, section, distances):
    """Histograms of 1st / k-th neighbour distances, one panel per space.

    distances: {space: (first float32 (nq,), kth float32 (nq,))}.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(distances), figsize=(5 * len(distances), 3.8))
    for ax, (space, (first, kth)) in zip(np.atleast_1d(axes), distances.items()):
        bins = np.linspace(0, max(first.max(), kth.max()), 60)
        ax.hist(first, bins=bins, alpha=0.6, label="1st neighbour")
        ax.hist(kth, bins=bins, alpha=0.6, label=f"{section['k']}th neighbour")
        p = section["spaces"][space]["prob_first_exceeds_kth"]
        ax.set_title(f"{space}: P(d_1(x) > d_{section['k']}(y)) = {100 * p:.1f}%", fontsize=9)
        ax.set_xlabel("L2 distance")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(folder) / FIGURE3_PNG, dpi=120)
    plt.close(fig)


def plot_appendixc(folder, section):
    """Recall of the true neighbour vs mean results per query, one line per space."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for space, points in section["spaces"].items():
        ax.plot([p["mean_results"] for p in points], [100 * p["recall"] for p in points],
                marker="o", label=space)
    ax.set_xscale("log")
    ax.set_xlabel("mean results per query (range search, one global ε)")
    ax.set_ylabel("recall of the true nearest neighbour (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(folder) / APPENDIXC_PNG, dpi=120)
    plt.close(fig)
