"""Report sections of instruction tuning (``transfer sft``: training and validation loss curves) and of the study's
Table 1 analog (``transfer table``: judged quality and code-switching per model variant; Zhao et al. 2024)."""

from __future__ import annotations

import math
from typing import Any

from babelscope.report.base import Section, table_file, table_rows
from babelscope.report.markup import stats


def loss_curves(train: list[dict[str, Any]], val: list[dict[str, Any]], per_epoch: int | None):
    """Training loss per optimizer step and validation loss at its evaluations, against epochs (or samples)."""
    from babelscope.report.figures import PALETTE, new_figure

    fig, ax = new_figure(7.5, 3.8)
    scale = per_epoch or 1
    xs = [r["samples"] / scale for r in train if r.get("loss") is not None]
    ax.plot(xs, [r["loss"] for r in train if r.get("loss") is not None], color=PALETTE[0], lw=0.9, alpha=0.8,
            label="training loss (per step)")
    if val:
        ax.plot([r["samples"] / scale for r in val], [r["val_loss"] for r in val], color=PALETTE[3], lw=1.8,
                marker="o", ms=4, label="validation loss (held out)")
    ax.set_xlabel("epochs" if per_epoch else "samples")
    ax.set_ylabel("mean NLL per response token (nats)")
    if per_epoch:
        for e in range(1, math.ceil(max(xs + [0.0])) + 1):
            ax.axvline(e, color="#bbbbbb", lw=0.7, ls=":")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig, ax


def sft_section(doc: dict[str, Any]) -> Section:
    """Loss curves, where the validation loss turns, data counts (truncation included)."""
    res = doc.get("results") or {}
    section = Section(f"Instruction tuning of {res.get('model', '?')} on {res.get('data', '?')}")
    lora = res.get("lora")
    how = (f"LoRA rank {lora['r']} on {', '.join(lora['targets'])}"
           + (f", {lora['train_tokens']} new embedding rows trained" if lora.get("train_tokens") else "")
           if lora else "full fine-tuning")
    section.text(f"Loss on the response tokens only ({how}; prompts in the {res.get('template', '?')} template). "
                 "Validation loss is the same mean over the held-out split (a seeded hash of each row). Zhao et al. "
                 "2024 report that SFT models overfit on validation loss after one epoch.")
    summary = dict(res.get("summary") or {})
    turn = res.get("validation_turn")
    summary["validation turns at"] = (f"epoch {turn['epoch']:.2f} (step {turn['step']}, loss {turn['val_loss']:.4f})"
                                      if turn else "does not turn (still falling at the last evaluation)")
    section.add(stats(summary))
    train, val = table_rows(doc, "train_curve"), table_rows(doc, "validation")
    counts = res.get("data_counts") or {}
    per_epoch = counts.get("train", {}).get("encoded")
    if train:
        fig, _ = loss_curves(train, val, per_epoch)
        section.figure(fig, f"Training and validation loss over {summary.get('epochs', '?')} epoch(s) of "
                       f"{per_epoch or '?'} conversations; {counts.get('validation', {}).get('encoded', '?')} held "
                       "out.", alt="Line chart of training and validation loss against epochs.")
    if val:
        section.table(val, source=table_file(doc, "validation"))
    if counts:
        flat = [{"split": split, **c} for split, c in counts.items() if isinstance(c, dict)]
        section.add("<h3>Data</h3>")
        section.text(f"{counts.get('conversations')} conversations read ({counts.get('skipped_no_answer', 0)} rows "
                     "without an answer skipped). 'truncated': a response partly cut by --max-length (trained on "
                     "what is left); 'cut away': nothing of the response left (dropped, never trained on).")
        section.table(flat)
    return section


def table_section(doc: dict[str, Any]) -> Section:
    """Zhao et al. 2024 Table 1 analog: one row per model variant."""
    res = doc.get("results") or {}
    rows = table_rows(doc, "variants")
    section = Section("Response quality and code-switching per model variant (Table 1 analog)")
    section.text(f"Judged by {', '.join(res.get('judges') or ['?'])}: accuracy (ACC), fluency (F), informativeness "
                 "(INFO), logical coherence (LC), harmlessness (H), each 0-3, and AVG, their mean; code-switching "
                 "is the share of responses with a segment in another language than the instruction's.")
    if res.get("warning"):
        section.text(f"Warning: {res['warning']}.")
    if rows:
        from babelscope.report.sections.evaluate import bars_with_errors

        fig, _ = bars_with_errors([r["variant"] for r in rows], {"AVG (0-3)": [r["AVG"] for r in rows]},
                                  ylabel="judged AVG", ymax=3.0)
        section.figure(fig, "Judged AVG per model variant.", alt=f"Bar chart of AVG for {len(rows)} variants.")
        section.table(rows, columns=["variant", "step", "judge", "responses", "judged", "ACC", "F", "INFO", "LC",
                                     "H", "AVG", "code_switching"])
    return section
