"""The Table 1 analog of Zhao et al. 2024 ("LLaMA Beyond English"): one row per model variant (vocabulary
extension or not, further pretraining scale, instruction tuning) with the judged response quality ACC, F, INFO,
LC, H and AVG (each 0-3, :mod:`babelscope.evaluate.judge`) and the code-switching rate (their Fig. 4,
:mod:`babelscope.evaluate.codeswitch`).

A model-free step: it reads the run directory's ``responses`` steps (``eval respond``) and, for each, the
``codeswitch`` step whose ``responses`` option names it (when there is one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.transfer.configs import StudyTableConfig

KIND = "transfer_table"


def variant_rows(run_dir: Path, cfg: StudyTableConfig) -> list[dict[str, Any]]:
    """One row per response step: label, model, judge, responses, judged, the five criteria, AVG, code-switching."""
    from babelscope.evaluate.judge import CRITERIA
    from babelscope.runs import iter_results

    docs = iter_results(run_dir)
    responses = {d["step"]: d for d in docs if d.get("kind") == "responses"}
    switches = {d["config"].get("responses"): d for d in docs if d.get("kind") == "codeswitch"}
    names = list(responses) if cfg.steps in ("all", "", None) else [s.strip() for s in cfg.steps.split(",")]
    missing = [n for n in names if n not in responses]
    if missing or not names:
        which = f" {', '.join(missing)}" if missing else ""
        raise BabelscopeError(f"--steps {cfg.steps}: no finished response step{which} in {run_dir}; run "
                              f"`babelscope eval respond` first (have: {', '.join(responses) or 'none'})")
    labels = [x.strip() for x in cfg.labels.split(",")] if cfg.labels else None
    if labels and len(labels) != len(names):
        raise BabelscopeError(f"--labels: {len(labels)} labels for {len(names)} response steps; give one each")
    rows = []
    for i, name in enumerate(names):
        doc = responses[name]
        items = [r for r in doc["tables"]["per_item"]["rows"] if r.get("AVG") is not None]
        res = doc["results"]
        row: dict[str, Any] = {"variant": labels[i] if labels else res.get("model"), "step": name,
                               "model": res.get("model"), "judge": res.get("judge"),
                               "responses": res["summary"]["responses"], "judged": len(items)}
        for c in [*CRITERIA, "AVG"]:
            row[c] = sum(float(r[c]) for r in items) / len(items) if items else None
        cs = switches.get(name)
        row["code_switching"] = cs["results"]["summary"]["rate"] if cs else None
        rows.append(row)
    return rows


def unjudged_warning(rows: list[dict[str, Any]], run_dir: Path) -> str | None:
    """Why every criterion of the table is empty when no variant has a judged response (the judge's mode, the
    failed and unparsed judgments), else ``None``."""
    if any(r["judged"] for r in rows):
        return None
    from babelscope.runs import load_results

    why = []
    for r in rows:
        s = load_results(Path(run_dir) / r["step"])["results"]["summary"]
        if str(r["judge"]) == "none":
            why.append(f"{r['step']}: judge none")
        else:
            why.append(f"{r['step']}: judge {r['judge']}, {s.get('failed', 0)} failed and {s.get('unparsed', 0)} "
                       f"unparsed of {s.get('responses', 0)}")
    return ("no variant has a judged response, so ACC, F, INFO, LC, H and AVG are empty (" + "; ".join(why)
            + "); re-run `babelscope eval respond` with --judge local or openai")


def run(cfg: StudyTableConfig, run_dir, step: str = "table", loaded=None) -> dict[str, Any]:
    """The ``babelscope transfer table`` step (reads results only; recomputed when a step it reads changed)."""
    from babelscope.runs import is_main_process, iter_results, provenance
    from babelscope.steps import StepRun, results_sha256

    sr = StepRun(cfg, run_dir, step, loaded)
    rows = variant_rows(sr.run_dir, cfg)
    names = {r["step"] for r in rows}  # the response steps and the codeswitch steps of their responses
    reads = names | {d["step"] for d in iter_results(sr.run_dir)
                     if d.get("kind") == "codeswitch" and d["config"].get("responses") in names}
    if (doc := sr.done(inputs={name: results_sha256(sr.run_dir, name) for name in sorted(reads)})) is not None:
        return doc
    if not is_main_process():
        return sr.wait()
    judges = sorted({str(r["judge"]) for r in rows})
    results: dict[str, Any] = {"judges": judges, "variants": len(rows)}
    warning = unjudged_warning(rows, sr.run_dir)
    if warning:
        import sys

        print(f"warning: {warning}", file=sys.stderr)
        results["warning"] = warning
    return sr.write(KIND, results, {"variants": rows}, provenance())
