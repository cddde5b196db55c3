"""lm-evaluation-harness on the same local data, for agreement checks and the benchmark (optional extra ``bench``).

:func:`harness_task` writes the shared data in the layout of the harness's Hugging Face datasets (JSON lines) and
a task YAML that ``include``-s the harness's own task file (its prompts, few-shot sampler and delimiters) with
``dataset_path: json``, then builds the task's requests. :func:`harness_loglikelihoods` scores them with the
harness's ``HFLM`` wrapping an already-loaded model, so both sides see the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.evaluate.benchmarks import data_path, read_csv_rows, read_jsonl


def _lm_eval_tasks_dir() -> Path:
    try:
        import lm_eval
    except ImportError:
        raise BabelscopeError("lm-evaluation-harness is not installed; pip install 'babelscope[bench]'") from None
    return Path(lm_eval.__file__).parent / "tasks"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _mmlu_rows(path: Path, subject: str) -> list[dict[str, Any]]:
    rows = read_csv_rows(path, ["question", "choice0", "choice1", "choice2", "choice3", "answer"], "question")
    out = []
    for r in rows:
        answer = r["answer"].strip()
        gold = int(answer) if answer.isdigit() else ord(answer.upper()) - 65
        out.append({"question": r["question"], "subject": subject,
                    "choices": [r[f"choice{i}"] if f"choice{i}" in r else r["ABCD"[i]] for i in range(4)],
                    "answer": gold})
    return out


def harness_task(benchmark: str, subset: str, workdir: Path, shots: int | None = None):
    """The harness's task object for ``benchmark`` (``xcopa``, ``mmlu``, ``ceval``) on our local files."""
    tasks = _lm_eval_tasks_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"babelscope_{benchmark}_{subset}"
    if benchmark == "xcopa":
        files = {}
        for split, hf_split in [("test", "test"), ("val", "validation")]:
            rows = read_jsonl(data_path(f"bench/xcopa/data/{subset}/{split}.{subset}.jsonl"))
            _write_jsonl(workdir / f"{hf_split}.jsonl", [{k: v for k, v in r.items() if k != "_source"}
                                                         for r in rows])
            files[hf_split] = str(workdir / f"{hf_split}.jsonl")
        include = tasks / "xcopa" / f"default_{subset}.yaml"
    elif benchmark == "mmlu":
        files = {}
        for split in ["test", "dev"]:
            _write_jsonl(workdir / f"{split}.jsonl",
                         _mmlu_rows(data_path(f"bench/mmlu/{split}/{subject_file(subset, split)}"), subset))
            files[split] = str(workdir / f"{split}.jsonl")
        include = tasks / "mmlu" / "default" / f"mmlu_{subset}.yaml"
    elif benchmark == "ceval":
        files = {}
        for split in ["val", "dev"]:
            rows = read_csv_rows(data_path(f"bench/ceval/{split}/{subset}_{split}.csv"),
                                 ["id", "question", "A", "B", "C", "D", "answer"], "id")
            _write_jsonl(workdir / f"{split}.jsonl", [{k: r[k] for k in ("id", "question", "A", "B", "C", "D",
                                                                         "answer")} for r in rows])
            files[split] = str(workdir / f"{split}.jsonl")
        include = tasks / "ceval" / f"ceval-valid_{subset}.yaml"
    else:
        raise BabelscopeError(f"no harness bridge for {benchmark!r}; use xcopa, mmlu or ceval")
    if not include.is_file():
        raise BabelscopeError(f"lm-evaluation-harness has no task file {include.name}; check the subset")
    config = (f"include: {include}\ntask: {name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
              f"dataset_kwargs:\n  data_files: {json.dumps(files)}\n")
    (workdir / f"{name}.yaml").write_text(config, encoding="utf-8")
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(workdir)).load([name])["tasks"][name]
    if shots is not None:
        task.set_config(key="num_fewshot", value=shots)
    return task


def subject_file(subject: str, split: str) -> str:
    return f"{subject}_{split}.csv"


def harness_requests(task, limit: int | None = None) -> list[Any]:
    """The task's loglikelihood instances (``.args`` = (context, continuation); ``.doc_id``, ``.idx``)."""
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return list(task.instances)


def harness_model(model, tokenizer, batch_size: int = 8, softmax_dtype: str | None = None):
    """The harness's ``HFLM`` around an already-loaded model and tokenizer.

    ``softmax_dtype="float64"`` is the accurate reference: the harness's default float32 ``log_softmax`` over a
    262k vocabulary is off by up to 1e-4 nats per token on CPU (against float64), while babelscope's
    ``logits[target] - logsumexp(logits)`` stays within 3e-6.
    """
    _lm_eval_tasks_dir()
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, softmax_dtype=softmax_dtype)


def harness_loglikelihoods(lm, instances: list[Any]) -> list[float]:
    """Log-likelihood of each instance's continuation, as the harness computes it."""
    return [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
