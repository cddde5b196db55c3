"""Report sections for ``tokens`` (tokenizer efficiency) and ``vocab`` (vocabulary extension) results."""

from __future__ import annotations

import statistics
from typing import Any

from babelscope.report.base import Section, table_file, table_rows
from babelscope.report.markup import esc, format_value, stats

LABELS = {
    "tokens_per_byte": "tokens / byte", "tokens_per_char": "tokens / char", "tokens_per_unit": "tokens / unit",
    "byte_fallback_share": "byte fallback", "unk_share": "unknown", "split_share": "split words",
    "not_nfc_share": "not NFC",
}  # fmt: skip
TITLES = {
    "premium": "tokens of the language / tokens of English on the same parallel units (Petrov et al. 2023)",
    "fertility": "subword tokens per UD word (Rust et al. 2021)",
    "split_share": "share of UD words split into two or more tokens",
    "byte_fallback_share": "share of tokens that are byte-fallback pieces <0xNN>",
    "not_nfc_share": "share of units whose text is not in Unicode NFC (decomposed accents cost extra tokens)",
}
EXPLAIN = (
    '<dl class="measures"><dt>Premium</dt><dd>Tokens a language needs for the same content as English, on '
    "parallel units (Petrov et al. 2023): 2 means twice the compute and half the usable context.</dd>"
    "<dt>Fertility</dt><dd>Subword tokens per word of a UD treebank, and the share of words split into two or more "
    "tokens (Rust et al. 2021); 1 means every word is one token.</dd></dl>"
)


def premium_chart(rows: list[dict[str, Any]], models: list[str], key: str = "premium"):
    """Bars of ``key`` per language, one bar per model side by side, languages grouped by script."""
    from babelscope.report.figures import PALETTE, darken, new_figure

    by_lang: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get(key) is not None:
            by_lang.setdefault(r["lang"], {"script": r.get("script") or "?"})[r["model"]] = r[key]
    first = models[0]
    groups: dict[str, list[str]] = {}
    for lang, d in by_lang.items():
        groups.setdefault(d["script"], []).append(lang)
    for langs in groups.values():
        langs.sort(key=lambda x: by_lang[x].get(first, 0))
    order = sorted(groups, key=lambda g: (statistics.median(by_lang[x].get(first, 0) for x in groups[g]), g))
    n = sum(len(v) for v in groups.values())
    fig, ax = new_figure(min(18.0, max(6.0, 0.22 * n * max(1, len(models)) ** 0.5 + 2)), 4.2)
    width = 0.8 / len(models)
    x, ticks, labels = 0.0, [], []
    for g in order:
        first_x = x
        for lang in groups[g]:
            for k, m in enumerate(models):
                if m in by_lang[lang]:
                    ax.bar(x - 0.4 + width * (k + 0.5), by_lang[lang][m], width=width, color=PALETTE[k % 10],
                           label=m if not ticks and lang == groups[g][0] and g == order[0] else None)  # fmt: skip
            ticks.append(x)
            labels.append(lang)
            x += 1
        ax.text((first_x + x - 1) / 2, ax.get_ylim()[1], g, ha="center", va="bottom", fontsize=8,
                color=darken("#1f77b4"), fontweight="bold")  # fmt: skip
        x += 0.8
    if key == "premium":
        ax.axhline(1.0, color="#888888", lw=0.8, ls="--")
    ax.set_xticks(ticks, labels, rotation=90, fontsize=8 if n <= 60 else 6)
    ax.set_ylabel(LABELS.get(key, key))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    top = max((v for d in by_lang.values() for m, v in d.items() if m != "script"), default=1.0)
    ax.set_ylim(0, top * 1.12)
    for t in ax.texts:  # group labels at the top, once the scale is known
        t.set_y(top * 1.04)
    if len(models) > 1:
        ax.legend(fontsize=8, frameon=False, loc="upper left")
    return fig, ax


def tokens_section(doc: dict[str, Any]) -> Section:
    """Premium per language (chart grouped by script), the per-language table and fertility on UD."""
    res = doc.get("results") or {}
    rows = table_rows(doc, "per_language")
    fert = table_rows(doc, "fertility")
    models = res.get("models") or sorted({r["model"] for r in rows})
    section = Section(title=f"Tokenizer efficiency of {', '.join(models)} on {res.get('corpus', '?')}")
    section.add(f"<p>{len(models)} tokenizer(s), {len({r['lang'] for r in rows})} languages of "
                f"<strong>{esc(res.get('corpus', '?'))}</strong>; premium relative to "
                f"<strong>{esc(res.get('reference') or '-')}</strong>. No forward pass.</p>")  # fmt: skip
    for m, s in (res.get("summary") or {}).items():
        section.add(f"<h3>{esc(m)}</h3>" + stats({k.replace("_", " "): v for k, v in s.items()}))
    section.add(EXPLAIN)
    if any(r.get("premium") is not None for r in rows):
        fig, _ = premium_chart(rows, models)
        section.figure(fig, caption=f"Token premium relative to {res.get('reference')} per language, grouped by "
                       f"script (dashed line: parity); tokenizers {', '.join(models)}.",
                       alt=f"Bar chart of the token premium of {len(rows)} rows grouped by script.")  # fmt: skip
    cols = ["model", "lang", "name", "script", "units", "tokens", "bytes", "tokens_per_byte", "tokens_per_char",
            "tokens_per_unit", "premium", "byte_fallback_share", "unk_share", "not_nfc_share"]  # fmt: skip
    ranked = sorted(rows, key=lambda r: (r["model"], -(r.get("premium") or 0)))
    section.add("<h3>Per language</h3>")
    section.table(ranked, columns=cols, labels=LABELS, titles=TITLES, sorted_by="premium",
                  source=table_file(doc, "per_language"))  # fmt: skip
    if fert:
        section.add(f"<h3>Fertility on {esc(res.get('ud') or 'UD')}</h3>")
        section.table(fert, labels=LABELS, titles=TITLES, source=table_file(doc, "fertility"))
    return section


def vocab_section(doc: dict[str, Any]) -> Section:
    """Premium before/after, fertility, added tokens used, the checks and the init-quality table."""
    res = doc.get("results") or {}
    summ = res.get("summary") or {}
    lang = res.get("lang", "?")
    section = Section(title=f"Vocabulary extension of {res.get('model', '?')} for {lang}")
    section.add(
        f"<p>A {esc(res.get('model_type'))} SentencePiece model of {format_value(res.get('vocab_size'))} pieces was "
        f"trained on the {esc(lang)} text; <strong>{format_value(summ.get('added'))}</strong> of its pieces were new "
        f"and were merged into the base <strong>{esc(res.get('kind'))}</strong> tokenizer; "
        f"{format_value(summ.get('unreachable'))} of them are unreachable and "
        f"{format_value(summ.get('seen_on_target'))}"
        f" occur on the target text. New rows initialised by <strong>{esc(res.get('init'))}</strong>; the extended "
        f"model is <code>{esc(res.get('out'))}</code>.</p>"
    )  # fmt: skip
    section.add(stats({k.replace("_", " "): v for k, v in summ.items()}))
    eff = [r for r in table_rows(doc, "efficiency") if "set" not in r]
    if eff:
        fig, _ = premium_chart(eff, ["base", "extended"])
        section.figure(fig, caption=f"Token premium relative to English before (base) and after (extended) the "
                       f"extension for {lang}, on {res.get('parallel')}, grouped by script.",
                       alt="Bar chart of the token premium per language before and after the extension.")  # fmt: skip
        pivot: dict[str, dict[str, Any]] = {}
        for r in eff:
            p = pivot.setdefault(r["lang"], {"lang": r["lang"], "name": r["name"], "script": r["script"]})
            p[f"premium_{r['model']}"] = r["premium"]
            p[f"tokens_{r['model']}"] = r["tokens"]
        section.add("<h3>Premium before and after</h3>")
        section.table(sorted(pivot.values(), key=lambda p: -(p.get("premium_base") or 0)),
                      source=table_file(doc, "efficiency"))  # fmt: skip
    held = [r for r in table_rows(doc, "efficiency") if r.get("set") == "held-out"]
    fert = table_rows(doc, "fertility")
    if held or fert:
        section.add(f"<h3>Held-out {esc(lang)} text</h3>")
        merged = [{**r, **next((f for f in fert if f["model"] == r["model"]), {})} for r in held]
        section.table(merged, columns=["model", "units", "tokens", "tokens_per_byte", "tokens_per_unit",
                                       "fertility", "split_share", "byte_fallback_share"],
                      labels=LABELS, titles=TITLES)  # fmt: skip
    added = table_rows(doc, "added_tokens")
    if added:
        used = sorted((r for r in added if r.get("seen")), key=lambda r: -r["seen"])
        section.add(f"<h3>Added tokens used</h3><p>{len(used)} of {len(added)} added tokens occur on the {esc(lang)} "
                    "text; the most frequent:</p>")  # fmt: skip
        section.table(used[:30], columns=["id", "text", "seen", "old_tokens", "reachable"],
                      source=table_file(doc, "added_tokens"))  # fmt: skip
        if res.get("unreachable_pieces"):
            section.add("<p>Unreachable: " + ", ".join(f"<code>{esc(p)}</code>" for p in res["unreachable_pieces"][:60])
                        + "</p>")  # fmt: skip
    trips = table_rows(doc, "round_trip")
    if trips:
        section.add("<h3>Round trip and changed tokenization</h3>")
        section.table(trips, labels={"changed_share": "changed"},
                      titles={"changed_share": "share of units whose tokenization changed"},
                      source=table_file(doc, "round_trip"))  # fmt: skip
    qual = table_rows(doc, "init_quality")
    if qual:
        section.add("<h3>Initialisation quality before training</h3><p>Bits per unit (total NLL / ln 2 / units) of "
                    "the extended model with each init next to the base model on the same held-out units; the "
                    "content is the same, so the numbers compare across tokenizers. Closer to the base is "
                    "better.</p>")  # fmt: skip
        cols = ["texts", "units", "base", "subword-mean", "mean", "random", "base_tokens", "subword-mean_tokens"]
        section.table(qual, columns=cols, source=table_file(doc, "init_quality"))
    return section
