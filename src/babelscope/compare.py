"""Several runs side by side: ``babelscope compare RUN_DIR ...`` (results files only, no model).

Every step folder under the given run directories (a run directory, or one step folder) is read from its
``results.json``. Each *measurement* below names the step kind, table and columns it takes; rows are joined by
measurement, key (language, layer, subset, region, samples) and model, one column per model (a model measured by
several steps of one kind gets one column per step: ``model [step]``). Figures overlay the models, one colour per
model: per-layer curves on relative depth (layer / number of layers) so models of different depths line up.

Measurements:

* bits per parallel unit per language (the measure comparable across tokenizers: the same UDHR articles in every
  language, ``bits = NLL / ln 2`` per unit; ``ppl``);
* tokenizer premium per language (tokens relative to English on the same units, Petrov et al. 2023; ``tokens``);
* benchmark accuracy per subset (``eval bench``);
* share of language-specific FFN neurons per layer (LAPE, Tang et al. 2024; ``neurons``);
* latent-language curve per layer: P(target word) and P(English word) under the logit lens (Wendler et al. 2024;
  ``lens translate``);
* region sizes and removal ratios (median perplexity ratio after removing Top/Bottom/Random-k; ``regions``);
* forgetting curves of further pretraining (held-out perplexity per language against samples seen).

Bad input (one line, exit 2): fewer than two models, no measurement that two models share, or two runs whose
corpus of one name holds different texts (their per-language checksums differ).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError

KIND = "compare"


@dataclass
class CompareConfig:
    runs: str = ""  # run directories (or step folders), comma-separated
    measures: str = "all"  # comma-separated names of MEASURES, or all


@dataclass(frozen=True)
class Measure:
    """One measurement: which step kind and table it reads, the join key and the value of a row."""

    name: str
    title: str
    kind: str
    table: str
    keys: tuple[str, ...]
    value: Callable[[dict, dict], float | None]  # (row, results document) -> value
    plot: str = "lines"  # "lines" over the last key (per layer / samples), "points" over languages or subsets
    rows: Callable[[list[dict], dict], list[dict]] = field(default=lambda rows, doc: rows)
    corpus: bool = False  # the measurement is of a named corpus whose texts must agree across runs


def _col(name: str) -> Callable[[dict, dict], float | None]:
    return lambda row, doc: _num(row.get(name))


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _base_model_rows(rows: list[dict], doc: dict) -> list[dict]:
    """A tokens step may measure several tokenizers side by side: keep the first (the step's base model)."""
    first = next((r.get("model") for r in rows if r.get("model")), None)
    return [r for r in rows if r.get("model") == first]


def _lape_share(rows: list[dict], doc: dict) -> list[dict]:
    """Per layer: language-specific neurons (summed over languages, a neuron counted once per language) as a
    share of the layer's FFN width when the step records it."""
    width = _num((doc.get("results") or {}).get("neurons_per_layer"))
    per_layer: dict[int, float] = defaultdict(float)
    for r in rows:
        if isinstance(r.get("layer"), int) and _num(r.get("neurons")) is not None:
            per_layer[r["layer"]] += r["neurons"]
    depth = max(per_layer, default=0) + 1
    return [{"layer": layer, "depth": (layer + 0.5) / depth, "share": n / width if width else None, "neurons": n}
            for layer, n in sorted(per_layer.items())]


def _depth(rows: list[dict], doc: dict) -> list[dict]:
    """Lens rows with relative depth ``layer / deepest layer`` (layer 0: the embeddings)."""
    deepest = max((r["layer"] for r in rows if isinstance(r.get("layer"), int)), default=1) or 1
    return [{**r, "depth": round(r["layer"] / deepest, 4)} for r in rows if isinstance(r.get("layer"), int)]


MEASURES: tuple[Measure, ...] = (
    Measure("bits_per_unit", "Bits per parallel unit per language", "perplexity", "per_language", ("lang",),
            _col("bits_per_unit"), plot="points", corpus=True),
    Measure("premium", "Tokenizer premium (tokens relative to English on the same units)", "tokens",
            "per_language", ("lang",), _col("premium"), plot="points", rows=_base_model_rows, corpus=True),
    Measure("accuracy", "Benchmark accuracy per subset", "knowledge", "per_subset", ("subset",), _col("acc"),
            plot="points"),
    Measure("lape_share", "Language-specific neurons per layer (share of the layer's FFN neurons, summed over "
            "languages)", "neurons", "per_layer", ("depth",),
            lambda r, d: r["share"] if r["share"] is not None else r["neurons"], rows=_lape_share),
    Measure("latent_target", "Latent language: P(target word) per layer (logit lens)", "lens-translation",
            "per_layer", ("lang", "depth"), _col("p_target"), rows=_depth),
    Measure("latent_english", "Latent language: P(English word) per layer (logit lens)", "lens-translation",
            "per_layer", ("lang", "depth"), _col("p_english"), rows=_depth),
    Measure("region_ratio", "Region removal: median perplexity ratio (after / before)", "regions-ablation",
            "summary", ("region", "k", "scope"), _col("median_ratio"), plot="points"),
    Measure("region_size", "Region sizes (weights selected)", "regions-ablation", "summary",
            ("region", "k", "scope"), _col("selected"), plot="points"),
    Measure("forgetting", "Forgetting curves: held-out perplexity per language against samples trained",
            "transfer-pretrain", "curve", ("lang", "samples"), _col("ppl")),
)  # fmt: skip
BY_NAME = {m.name: m for m in MEASURES}


@dataclass
class Source:
    """One step's results: where, which model, the document."""

    path: Path
    model: str
    doc: dict


def find_results(runs: list[Path]) -> list[Source]:
    """Every ``results.json`` in the given run directories (or step folders), skipping compare steps."""
    from babelscope.runs import load_results

    out = []
    for run in runs:
        if not run.exists():
            raise BabelscopeError(f"{run}: no such run directory; give run directories written by babelscope")
        files = [run / "results.json"] if (run / "results.json").is_file() else sorted(run.glob("*/results.json"))
        if not files:
            raise BabelscopeError(f"{run}: no results.json in it or its step folders; run some steps first")
        for f in files:
            doc = load_results(f)
            if doc.get("kind") == KIND:
                continue
            model = (doc.get("results") or {}).get("model") or (doc.get("config") or {}).get("model") or "?"
            if isinstance(model, list):
                model = model[0]
            out.append(Source(f.parent, str(model).split(",")[0], doc))
    return out


def _labels(sources: list[Source], kind: str) -> dict[Path, str]:
    """A column label per step of ``kind``: the model name, with the step when a model has several."""
    mine = [s for s in sources if s.doc.get("kind") == kind]
    count = defaultdict(int)
    for s in mine:
        count[s.model] += 1
    return {s.path: s.model if count[s.model] == 1 else f"{s.model} [{s.path.name}]" for s in mine}


def check_corpora(sources: list[Source]) -> None:
    """Refuse two steps that name the same corpus but scored different texts of a common language."""
    seen: dict[tuple[str, str], tuple[str, Path]] = {}
    for s in sources:
        res = s.doc.get("results") or {}
        data = (s.doc.get("provenance") or {}).get("data") or {}
        corpus = res.get("corpus") or data.get("corpus")
        sums = data.get("sha256")
        if not corpus or not isinstance(sums, dict):
            continue
        for lang, digest in sums.items():
            key = (str(corpus), str(lang))
            if key in seen and seen[key][0] != digest:
                raise BabelscopeError(
                    f"different corpora under one name: {corpus!r} in {seen[key][1]} and {s.path} hold different "
                    f"{lang} texts; compare runs made on the same data (or rename one corpus)"
                )
            seen.setdefault(key, (digest, s.path))


def join(sources: list[Source], measure: Measure) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)``: one row per key (plus the corpus where it matters), one column per model."""
    labels = _labels(sources, measure.kind)
    columns: list[str] = []
    table: dict[tuple, dict[str, Any]] = {}
    for s in sources:
        if s.path not in labels:
            continue
        rows = ((s.doc.get("tables") or {}).get(measure.table) or {}).get("rows") or []
        rows = measure.rows(rows, s.doc)
        corpus = (s.doc.get("results") or {}).get("corpus") if measure.corpus else None
        label = labels[s.path]
        for r in rows:
            if any(k not in r for k in measure.keys):
                continue
            value = measure.value(r, s.doc)
            if value is None:
                continue
            key = (corpus, *(r[k] for k in measure.keys))
            row = table.setdefault(key, {**({"corpus": corpus} if corpus else {}),
                                         **{k: r[k] for k in measure.keys}})
            row[label] = value
            if label not in columns:
                columns.append(label)
    return columns, list(table.values())


def compare(runs: list[Path], measures: str = "all") -> dict[str, Any]:
    """Join the runs' results by measurement; ``{"sections": [...], "models": [...]}``."""
    names = list(BY_NAME) if measures in ("", "all") else [m.strip() for m in measures.split(",") if m.strip()]
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise BabelscopeError(f"--measures {','.join(bad)}: unknown; use all or some of {', '.join(BY_NAME)}")
    sources = find_results(runs)
    check_corpora(sources)
    sections = []
    for name in names:
        columns, rows = join(sources, BY_NAME[name])
        if len(columns) >= 2 and rows:
            sections.append({"measure": name, "title": BY_NAME[name].title, "columns": columns, "rows": rows})
    if not sections:
        have = defaultdict(set)
        for s in sources:
            have[s.model].add(s.doc.get("kind"))
        described = "; ".join(f"{m}: {', '.join(sorted(k for k in kinds if k)) or 'nothing'}"
                              for m, kinds in have.items())
        raise BabelscopeError(
            f"no measurement in common between two models in {', '.join(map(str, runs))} ({described}); "
            "run the same step kind (ppl, tokens, bench, neurons, lens translate, regions, transfer pretrain) on "
            "at least two models"
        )
    # the models compared: those with a column in some section (not every model a step touched, such as the
    # extended-vocabulary copy a tokens step also read), in order of appearance
    models = list(dict.fromkeys(col.split(" [")[0] for sec in sections for col in sec["columns"]))
    return {"models": models, "sections": sections}


# ------------------------------------------------------------------------------------------------ figures
def figure(section: dict[str, Any], measure: Measure):
    """One figure per section: the models overlaid, one colour per model (per key group for 2-key curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, rows = section["columns"], section["rows"]
    keys = list(measure.keys)
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(columns)}
    if measure.plot == "points":  # categories on x (sorted by the first model), one marker series per model
        label_of = lambda r: " ".join(str(r[k]) for k in keys)  # noqa: E731
        rows = sorted(rows, key=lambda r: (r.get(columns[0]) is None, r.get(columns[0]) or 0))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(rows) + 2), 3.6))
        xs = range(len(rows))
        for c in columns:
            ax.plot(xs, [r.get(c, float("nan")) for r in rows], "o-", ms=4, lw=0.8, color=colours[c], label=c)
        ax.set_xticks(list(xs), [label_of(r) for r in rows], rotation=90, fontsize=7)
    else:  # curves over the last key, grouped by the other keys (one panel per group)
        groups = sorted({tuple(r[k] for k in keys[:-1]) for r in rows}, key=str)
        fig, axes = plt.subplots(1, len(groups), figsize=(3.4 * len(groups) + 1, 3.2), squeeze=False, sharey=True)
        for ax, group in zip(axes[0], groups, strict=True):
            mine = sorted((r for r in rows if tuple(r[k] for k in keys[:-1]) == group), key=lambda r: r[keys[-1]])
            for c in columns:
                pts = [(r[keys[-1]], r[c]) for r in mine if c in r]
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", ms=3, color=colours[c], label=c)
            ax.set_title(" ".join(map(str, group)) or measure.title, fontsize=9)
            ax.set_xlabel("relative depth" if keys[-1] == "depth" else keys[-1])
        ax = axes[0][0]
    ax.set_ylabel(measure.name.replace("_", " "))
    fig.suptitle(measure.title, fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig, ax


def markdown(result: dict[str, Any], figures: dict[str, str]) -> str:
    """The report: one section per measurement, a table with the models in columns and its figure."""
    lines = [f"# Comparison of {', '.join(result['models'])}", ""]
    for sec in result["sections"]:
        keys = [k for k in sec["rows"][0] if k not in sec["columns"]]
        lines += [f"## {sec['title']}", "", f"![{sec['measure']}]({figures[sec['measure']]})", ""]
        rows = sec["rows"]
        if keys and keys[-1] == "depth":  # each model's own layers: its value at the layer nearest each tenth
            rows = depth_grid(rows, keys, sec["columns"])
            lines += ["Each model at its layer nearest each tenth of its depth (every layer: the CSV and the "
                      "figure).", ""]
        lines.append("| " + " | ".join(keys + sec["columns"]) + " |")
        lines.append("|" + "---|" * (len(keys) + len(sec["columns"])))
        for r in rows:
            cells = [str(r.get(k, "")) for k in keys] + [_fmt(r.get(c)) for c in sec["columns"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def depth_grid(rows: list[dict], keys: list[str], columns: list[str], points: int = 11) -> list[dict]:
    """Rows of a per-layer measurement on a common grid of relative depths (0, 0.1, ..., 1): per group of the
    other keys and per model, the value of the model's layer whose depth is nearest each grid point (models of
    18, 24 and 30 layers otherwise share almost no row)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys[:-1]), []).append(r)
    out = []
    for group, members in groups.items():
        for i in range(points):
            d = i / (points - 1)
            row = {**dict(zip(keys[:-1], group, strict=True)), "depth": round(d, 2)}
            for c in columns:
                have = [r for r in members if r.get(c) is not None]
                if have:
                    row[c] = min(have, key=lambda r: abs(r["depth"] - d))[c]
            out.append(row)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


# ------------------------------------------------------------------------------------------------ step
def run(cfg: CompareConfig, run_dir, step: str = "compare", loaded=None) -> dict[str, Any]:
    """The ``babelscope compare`` step: the joined tables, one figure per measurement and ``report.md``."""
    from babelscope.runs import file_sha256, provenance, write_text
    from babelscope.steps import StepRun

    runs = [Path(r.strip()) for r in cfg.runs.split(",") if r.strip()]
    if not runs:
        raise BabelscopeError("compare: give at least one run directory (runs: a,b or RUN_DIR ...)")
    sr = StepRun(cfg, run_dir, step, loaded)
    result = compare(runs, cfg.measures)
    sources = find_results(runs)
    if (doc := sr.done(inputs={str(s.path): file_sha256(s.path / "results.json") for s in sources})) is not None:
        return doc
    figures = {}
    for sec in result["sections"]:
        fig, _ = figure(sec, BY_NAME[sec["measure"]])
        name = f"{sec['measure']}.png"
        sr.path.mkdir(parents=True, exist_ok=True)
        fig.savefig(sr.path / name, dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        figures[sec["measure"]] = name
    write_text(sr.path / "report.md", markdown(result, figures))
    results = {"models": result["models"], "runs": [str(r) for r in runs],
               "sections": [{k: v for k, v in s.items() if k != "rows"} for s in result["sections"]],
               "report": "report.md"}
    tables = {s["measure"]: s["rows"] for s in result["sections"]}
    return sr.write(KIND, results, tables, provenance())
