"""Meta-learned alignment of structural concepts: zero- and few-shot POS and relation classification in new
languages from English concept prototypes (Xu, Chen, Wang, Yang, Jiang and Wang, "Are Structural Concepts
Universal in Transformer Language Models?", Findings of EMNLP 2023, Sec. 6 and Fig. 17).

The language model is frozen: everything here works on the word vectors of the syntax store
(:mod:`babelscope.syntax.represent`), standardised per dimension with statistics pooled over the training
languages (decoders' massive activations would otherwise dominate every distance).

Prototype probe (Sec. 4.1). For a language with instances ``x`` (word vectors for POS, relation vectors
``h(head) - h(dependent)`` for relations) the prototype of concept ``c`` is the class mean ``mu_c``; a linear
projection ``P`` (64 x H) is trained so that

    p(c | x) = softmax_c( -|| P x - P mu_c ||^2 )                                                      (1)

with Adam (lr 1e-4, weight decay 1e-6) for 20 epochs, keeping the epoch with the best dev accuracy.

Meta-learning (Sec. 6). English prototypes ``e_c = P_en mu_en_c`` pass through an adaptor ``A`` (linear 64 x 64
with bias, initialised to the identity); target vectors pass through ``phi`` (H -> 384, LeakyReLU, dropout 0.33,
-> 64). For a language ``l`` the concepts are ``C_l = {c : n_en(c) >= m and n_l(c) >= m}`` (``m`` = 10) and

    zero-shot:   p(c | x) = softmax_{c in C_l}( -|| phi(x) - A e_c ||^2 )                              (2)
    few-shot:    p(c | x) = softmax_{c in C_l}( -|| phi(x) - q_c ||^2 ),
                 q_c = (A e_c + sum_{s in S_c} phi(s)) / (1 + |S_c|)                                      (3)

where ``S_c`` are the support instances of concept ``c`` (the N labelled target sentences): the adapted
English prototype counts as one more support example, as in prototypical networks. A meta-training episode
draws a support set (20 sentences) and a query set (30 sentences) of one meta-training language and minimises
the query cross-entropy of (2) plus that of (3); the official trainer fine-tunes the adaptor on the support set
instead (see docs/syntax-meta.md, deviations). The epoch with the best zero-shot dev accuracy is kept.

Baselines: a linear probe (logistic regression) trained on English and applied to the target; the prototype
probe (1) trained on the N target sentences alone; and the in-context POS tagging results of the evaluation
suite (``babelscope eval pos``: MONO and EN demonstrations) where the run has them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelscope.caches import json_sha256
from babelscope.errors import BabelscopeError
from babelscope.syntax.configs import MetaConfig

KIND = "syntax-meta"
CONCEPTS = ("pos", "relation")

# Pretraining languages as the model documentation lists them (ISO 639-1). multilingual-e5 is initialised from
# XLM-R and trained further on multilingual text; its card points to XLM-R's 100 languages (Conneau et al. 2020,
# Table 6). Gemma 3's documentation says "over 140 languages" without a list: unknown per language.
_XLMR = ("af am ar as az be bg bn br bs ca cs cy da de el en eo es et eu fa fi fr fy ga gd gl gu ha he hi hr hu hy "
         "id is it ja jv ka kk km kn ko ku ky la lo lt lv mg mk ml mn mr ms my ne nl no om or pa pl ps pt ro ru sa "
         "sd si sk sl so sq sr su sv sw ta te th tl tr ug uk ur uz vi xh yi zh")
XLMR_LANGUAGES = frozenset(_XLMR.split())
PRETRAINING = {
    "multilingual-e5": (XLMR_LANGUAGES, "XLM-R's 100 languages (multilingual-e5 model card; Conneau et al. 2020)"),
    "xlm-roberta": (XLMR_LANGUAGES, "XLM-R's 100 languages (Conneau et al. 2020, Table 6)"),
    "gemma-3": (None, "Gemma 3 model card: 'over 140 languages', no per-language list"),
}


# ------------------------------------------------------------------------------------------------- data
@dataclass
class Sentences:
    """One language's labelled instances grouped by sentence: the rows of sentence ``i`` are
    ``X[start[i]:start[i + 1]]``; ``y`` holds indices into the shared label list."""

    X: np.ndarray
    y: np.ndarray
    start: np.ndarray
    sent_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.sent_ids)

    def rows(self, sentences: np.ndarray) -> np.ndarray:
        """Row indices of the given sentences, concatenated in that order."""
        sentences = np.asarray(sentences, dtype=np.int64)
        lengths = self.start[sentences + 1] - self.start[sentences]
        offsets = np.repeat(self.start[sentences] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return offsets + np.arange(int(lengths.sum()))

    def take(self, sentences: np.ndarray) -> Sentences:
        sentences = np.asarray(sentences, dtype=np.int64)
        rows = self.rows(sentences)
        lengths = self.start[sentences + 1] - self.start[sentences]
        return Sentences(self.X[rows], self.y[rows], np.concatenate([[0], np.cumsum(lengths)]),
                         self.sent_ids[sentences])


def group_by_sentence(X: np.ndarray, labels: np.ndarray, sent_ids: np.ndarray, vocab: dict[str, int]) -> Sentences:
    """Instances (any order) -> :class:`Sentences`, sentences in sorted sent_id order, rows stable within one."""
    uniq, inv = np.unique(sent_ids, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    counts = np.bincount(inv, minlength=len(uniq))
    y = np.asarray([vocab[v] for v in labels], dtype=np.int64)
    return Sentences(np.ascontiguousarray(X[order], dtype=np.float32), y[order],
                     np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), uniq)


def concept_set(y_a: np.ndarray, y_b: np.ndarray, n_labels: int, min_count: int) -> np.ndarray:
    """Label indices attested at least ``min_count`` times in both label arrays (sorted)."""
    a = np.bincount(y_a, minlength=n_labels)
    b = np.bincount(y_b, minlength=n_labels)
    return np.flatnonzero((a >= min_count) & (b >= min_count))


def local_labels(y: np.ndarray, concepts: np.ndarray, n_labels: int) -> np.ndarray:
    """Global label indices -> positions in ``concepts`` (-1 for labels outside it)."""
    table = np.full(n_labels, -1, dtype=np.int64)
    table[concepts] = np.arange(len(concepts))
    return table[y]


# ------------------------------------------------------------------------------------------------- networks
def sq_dist(a, b):
    """Squared Euclidean distances (n, k) between the rows of ``a`` (n, d) and ``b`` (k, d)."""
    return (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1)


def _torch():
    import torch

    return torch


def new_projection(hidden: int, dim: int):
    """The probe's projection ``P`` (Eq. 1), uniform in [-0.05, 0.05] as in the official code."""
    torch = _torch()
    proj = torch.nn.Linear(hidden, dim, bias=False)
    torch.nn.init.uniform_(proj.weight, -0.05, 0.05)
    return proj


class MetaAligner(_torch().nn.Module):
    """``phi`` (H -> width, LeakyReLU, dropout, -> dim) for target vectors and the adaptor ``A`` (dim x dim with
    bias, identity-initialised) for the projected English prototypes (Eqs. 2-3)."""

    def __init__(self, hidden: int, dim: int = 64, width: int = 384, dropout: float = 0.33):
        super().__init__()
        nn = _torch().nn
        self.phi = nn.Sequential(nn.Linear(hidden, width), nn.LeakyReLU(0.2), nn.Dropout(dropout),
                                 nn.Linear(width, dim))
        self.adaptor = nn.Linear(dim, dim)
        for layer in (self.phi[0], self.phi[3]):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.eye_(self.adaptor.weight)
        nn.init.zeros_(self.adaptor.bias)

    def prototypes(self, english, zs=None, ys=None):
        """Adapted English prototypes ``A e_c`` (Eq. 2), refined by support features ``zs`` with local labels
        ``ys`` when given (Eq. 3)."""
        protos = self.adaptor(english)
        if zs is None or len(zs) == 0:
            return protos
        keep = ys >= 0
        sums = protos.new_zeros(protos.shape).index_add(0, ys[keep], zs[keep])
        counts = _torch().bincount(ys[keep], minlength=len(protos)).to(protos.dtype)
        return (protos + sums) / (1.0 + counts)[:, None]


def _ce(logits, y):
    """Mean cross-entropy over rows with a label in the concept set (``y >= 0``)."""
    torch = _torch()
    keep = y >= 0
    if not bool(keep.any()):  # no instance of the concept set in this batch: no loss (not NaN)
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[keep], y[keep])


def _accuracy(logits, y) -> tuple[int, int]:
    keep = y >= 0
    return int((logits[keep].argmax(1) == y[keep]).sum()), int(keep.sum())


# ------------------------------------------------------------------------------------------------- probe
def train_prototype_probe(train: Sentences, dev: Sentences | None, concepts: np.ndarray, n_labels: int, *,
                          dim: int = 64, epochs: int = 20, lr: float = 1e-4, weight_decay: float = 1e-6,
                          batch: int = 64, seed: int = 0) -> dict[str, Any]:
    """The prototype probe of Eq. (1) on ``train`` over ``concepts``; the epoch with the best ``dev`` accuracy
    is kept (the last one without dev data). Returns the projection, the class means and the dev accuracy."""
    torch = _torch()
    y = local_labels(train.y, concepts, n_labels)
    keep = np.flatnonzero(y >= 0)
    X = torch.from_numpy(train.X)
    mu = torch.stack([X[torch.from_numpy(train.y == c)].mean(0) for c in concepts])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = new_projection(train.X.shape[1], dim)
    opt = torch.optim.Adam(proj.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng([seed, 17])
    yt = torch.from_numpy(y)
    if dev is not None and len(dev):
        Xd, yd = torch.from_numpy(dev.X), torch.from_numpy(local_labels(dev.y, concepts, n_labels))
    best, best_acc = None, -1.0
    for _ in range(epochs):
        perm = keep[rng.permutation(len(keep))]
        for i in range(0, len(perm), batch):
            idx = torch.from_numpy(perm[i:i + batch])
            loss = _ce(-sq_dist(proj(X[idx]), proj(mu)), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev is not None and len(dev):
            with torch.no_grad():
                right, total = _accuracy(-sq_dist(proj(Xd), proj(mu)), yd)
            acc = right / total if total else float("nan")
            if acc > best_acc:
                best, best_acc = proj.weight.detach().clone(), acc
    weight = best if best is not None else proj.weight.detach().clone()
    return {"P": weight, "mu": mu, "dev_accuracy": best_acc if best is not None else float("nan")}


def probe_predict(probe: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """Positions (into the probe's concepts) of the nearest projected prototype."""
    torch = _torch()
    with torch.no_grad():
        P = probe["P"]
        return (-sq_dist(torch.from_numpy(X) @ P.T, probe["mu"] @ P.T)).argmax(1).numpy()


# ------------------------------------------------------------------------------------------------- meta-training
@dataclass
class MetaTask:
    """One meta-training language: its training and dev sentences and its concept set ``C_l``."""

    lang: str
    train: Sentences
    dev: Sentences
    concepts: np.ndarray


def _episode(data: Sentences, support: int, query: int, rng) -> tuple[np.ndarray, np.ndarray]:
    n = len(data)
    s = min(support, n // 2)
    q = min(query, n - s)
    pick = rng.choice(n, size=s + q, replace=False)
    return data.rows(pick[:s]), data.rows(pick[s:])


def meta_train(english: Any, tasks: list[MetaTask], n_labels: int, *, hidden: int, dim: int = 64,
               width: int = 384, dropout: float = 0.33, epochs: int = 5, episodes_per_lang: int = 50,
               support: int = 20, query: int = 30, lr: float = 1e-4, weight_decay: float = 1e-4,
               seed: int = 0, progress: Any = None) -> tuple[MetaAligner, list[dict[str, float]]]:
    """Episodic training of :class:`MetaAligner` (Eqs. 2-3) over ``tasks``; ``english`` (n_labels, dim) holds the
    projected English prototypes indexed by global label. Keeps the epoch with the best zero-shot dev accuracy."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MetaAligner(hidden, dim, width, dropout)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        rng = np.random.default_rng([seed, 29])
        tensors = [(torch.from_numpy(t.train.X), torch.from_numpy(local_labels(t.train.y, t.concepts, n_labels)),
                    english[torch.from_numpy(t.concepts)]) for t in tasks]
        devs = [(torch.from_numpy(t.dev.X), torch.from_numpy(local_labels(t.dev.y, t.concepts, n_labels)))
                for t in tasks]
        history, best, best_acc = [], None, -1.0
        for epoch in range(epochs):
            model.train()
            schedule = rng.permutation(np.repeat(np.arange(len(tasks)), episodes_per_lang))
            total = 0.0
            for k in schedule:
                X, y, protos_en = tensors[k]
                s_rows, q_rows = _episode(tasks[k].train, support, query, rng)
                s_idx, q_idx = torch.from_numpy(s_rows), torch.from_numpy(q_rows)
                z = model.phi(X[torch.cat([s_idx, q_idx])])
                zs, zq = z[:len(s_idx)], z[len(s_idx):]
                yq = y[q_idx]
                loss = _ce(-sq_dist(zq, model.prototypes(protos_en)), yq)
                if len(s_idx):
                    loss = loss + _ce(-sq_dist(zq, model.prototypes(protos_en, zs, y[s_idx])), yq)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                if progress is not None:
                    progress.update(1)
            model.eval()
            right = seen = 0
            with torch.no_grad():
                for (Xd, yd), (_, _, protos_en) in zip(devs, tensors, strict=True):
                    if len(Xd):
                        r, n = _accuracy(-sq_dist(model.phi(Xd), model.prototypes(protos_en)), yd)
                        right, seen = right + r, seen + n
            dev_acc = right / seen if seen else float("nan")
            history.append({"epoch": epoch + 1, "loss": total / max(len(schedule), 1), "dev_zero_shot": dev_acc})
            if best is None or (math.isfinite(dev_acc) and dev_acc > best_acc) or not seen:
                best, best_acc = copy.deepcopy(model.state_dict()), dev_acc
        model.load_state_dict(best)
        model.eval()
    return model, history


def meta_accuracy(model: MetaAligner, english_c: Any, test: Sentences, y_test: np.ndarray,
                  support: Sentences | None = None, y_support: np.ndarray | None = None) -> float:
    """Accuracy of Eq. (2) (no support) or Eq. (3) on the test instances whose label is in the concept set."""
    torch = _torch()
    with torch.no_grad():
        if support is None:
            protos = model.prototypes(english_c)
        else:
            protos = model.prototypes(english_c, model.phi(torch.from_numpy(support.X)), torch.from_numpy(y_support))
        right, total = _accuracy(-sq_dist(model.phi(torch.from_numpy(test.X)), protos), torch.from_numpy(y_test))
    return right / total if total else float("nan")


# ------------------------------------------------------------------------------------------------- the step
def parse_shots(spec: str | int) -> list[int]:
    try:
        shots = sorted({int(x) for x in str(spec).split(",") if str(x).strip()})
    except ValueError:
        raise BabelscopeError(f"--shots {spec!r}: give comma-separated sentence counts such as 0,1,5,10,20") from None
    if not shots or shots[0] < 0:
        raise BabelscopeError(f"--shots {spec!r}: give non-negative sentence counts such as 0,1,5,10,20")
    return shots


def _check_config(cfg: MetaConfig) -> tuple[list[str], list[int]]:
    kinds = [k.strip() for k in cfg.concepts.split(",") if k.strip()]
    if not kinds or set(kinds) - set(CONCEPTS):
        raise BabelscopeError(f"--concepts {cfg.concepts!r}: use pos, relation or both")
    shots = parse_shots(cfg.shots)
    if cfg.runs < 1 or cfg.meta_epochs < 1 or cfg.probe_epochs < 1 or cfg.episodes_per_lang < 1:
        raise BabelscopeError("--runs, --meta-epochs, --probe-epochs and --episodes-per-lang must be at least 1")
    if cfg.query < 1 or cfg.support < 0 or cfg.min_count < 1:
        raise BabelscopeError("--query and --min-count must be at least 1 and --support at least 0")
    if not 0 < cfg.dev_fraction < 1:
        raise BabelscopeError(f"--dev-fraction {cfg.dev_fraction}: give a share between 0 and 1")
    return kinds, shots


def _match(store, spec: str, what: str) -> list[str]:
    from babelscope.data.languages import parse_languages

    have = store.languages()
    out = []
    for lang in parse_languages(spec):
        code = lang.code if lang.code in have else next((c for c in have if c.split("-")[0] == lang.iso639_3), None)
        if code is None:
            raise BabelscopeError(f"{store.path}: {what} language {lang.code} is not in the store "
                                  f"({', '.join(have)}); extract it first")
        out.append(code)
    return out


def _layer(store, spec: str) -> list[int]:
    layers = store.layers()
    if spec in ("", "middle", None):
        return [layers[len(layers) // 2]]
    if spec == "auto":
        return layers
    try:
        layer = int(spec)
    except ValueError:
        raise BabelscopeError(f"--layer {spec!r}: give a stored layer ({layers}), middle or auto") from None
    if layer not in layers:
        raise BabelscopeError(f"--layer {spec}: not in the store (extracted layers {layers})")
    return [layer]


def _model_of(stores: list, langs: list[list[str]], model: str) -> dict[str, Any]:
    """The one model every store record was made with; a one-line error otherwise."""
    seen = {}
    for store, codes in zip(stores, langs, strict=True):
        for code in codes:
            rec = store.records[code]
            seen.setdefault(rec.get("checksum"), (rec.get("model"), f"{store.path}/{code}"))
    if len(seen) > 1:
        (c1, (m1, w1)), (c2, (m2, w2)) = list(seen.items())[:2]
        raise BabelscopeError(f"{w1} was extracted with {m1} ({str(c1)[:12]}) but {w2} with {m2} "
                              f"({str(c2)[:12]}); re-extract both with one model")
    checksum, (name, where) = next(iter(seen.items()))
    if model:
        from babelscope.models.loader import DEFAULT_MODEL

        wanted = model if model == DEFAULT_MODEL else Path(model).name
        if wanted != name:
            raise BabelscopeError(f"{where}: the store was made with {name}, not {model}; re-extract it with "
                                  f"--model {model} or drop --model")
    return {"model": name, "checksum": checksum}


def _splits(store, lang: str, treebank: str) -> tuple[dict[str, str], str]:
    """sent_id -> UD split of a held-out language, from its treebank (the store records which); a seeded
    hash split by sent_id (half pool, half test) when no train/dev and test files can be found."""
    from babelscope.data.ud import UdCorpus, treebank_paths

    spec = treebank or store.records[lang].get("treebank", "")
    try:
        corpus = UdCorpus(treebank_paths(spec), name=spec)
        units = corpus.units(lang) if lang in corpus.languages() else []
    except BabelscopeError:
        units = []
    split = {u.id: u.meta.get("split") for u in units}
    kinds = set(split.values())
    if "test" in kinds and kinds & {"train", "dev"}:
        pool = "train" if "train" in kinds else "dev"
        return {k: ("pool" if v == pool else "test" if v == "test" else "other") for k, v in split.items()}, \
            f"UD {pool} / test"
    return {}, "hash of sent_id (no UD train/dev and test files found)"


def _pretraining(model: str) -> tuple[frozenset | None, str]:
    for key, value in PRETRAINING.items():
        if key in model.lower():
            return value
    return None, f"{model}: no per-language pretraining list known"


def _stats(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation pooled over every set (float64 sums, no concatenation)."""
    n = sum(len(X) for X in sets)
    total = sum(X.sum(0, dtype=np.float64) for X in sets)
    mean = total / n
    var = sum(((X - mean) ** 2).sum(0, dtype=np.float64) for X in sets) / n
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)


def _fingerprint(stores: list) -> str:
    records = {str(s.path.parent.name): s.records for s in stores}
    return json_sha256(records, default=str)


def _icl_rows(run_dir: Path, step: str, checksum: str, tests: list[str]) -> tuple[dict[str, dict], int | None]:
    """MONO / EN in-context POS accuracy per held-out language from a ``pos`` step of the run, if present."""
    from babelscope.data.languages import resolve_language
    from babelscope.runs import load_results

    path = run_dir / step / "results.json"
    if not step or not path.exists():
        return {}, None
    doc = load_results(path)
    other = ((doc.get("provenance") or {}).get("model") or {}).get("checksum")
    if other and checksum and other != checksum and not str(checksum).startswith("random-init"):
        raise BabelscopeError(f"{path}: the in-context POS step used another model ({doc['results'].get('model')}) "
                              "than the store; re-run it with the store's model or pass --pos-step ''")
    out = {}
    for row in (doc.get("tables") or {}).get("per_language", {}).get("rows", []):
        code = resolve_language(row["lang"]).code
        match = next((t for t in tests if t == code or t.split("-")[0] == code.split("-")[0]), None)
        if match:
            out[match] = row
    return out, doc["results"].get("shots")


def _summary(per_run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[float]] = {}
    for r in per_run:
        groups.setdefault((r["concepts"], r["lang"], r["method"], r["shots"]), []).append(r["accuracy"])
    rows = []
    for (kind, lang, method, shots), accs in groups.items():
        a = np.asarray(accs, dtype=float)
        rows.append({"concepts": kind, "lang": lang, "method": method, "shots": shots, "mean": float(a.mean()),
                     "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "runs": len(a)})
    return rows


def _standardized(inst: dict[str, Any], tinst: dict[str, Any], vocab: dict[str, int]) -> dict[str, Sentences]:
    """Every language's instances grouped by sentence, z-scored with statistics pooled over ``inst`` (the
    source and meta-training languages)."""
    mean, std = _stats([v.X for v in inst.values()])
    return {lang: group_by_sentence(((v.X - mean) / std).astype(np.float32), v.labels, v.sent_ids, vocab)
            for lang, v in {**inst, **tinst}.items()}


def _split_pud(data: Sentences, dev_ids: set[str]) -> tuple[Sentences, Sentences]:
    dev = np.asarray([s in dev_ids for s in data.sent_ids], dtype=bool)
    return data.take(np.flatnonzero(~dev)), data.take(np.flatnonzero(dev))


def _english_probe(en: Sentences, dev_ids: set[str], n_labels: int, cfg: MetaConfig, seed: int, what: str):
    """The source language's prototype probe over its concepts attested ``min_count`` times (Eq. 1)."""
    train, dev = _split_pud(en, dev_ids)
    concepts = np.flatnonzero(np.bincount(train.y, minlength=n_labels) >= cfg.min_count)
    if len(concepts) < 2:
        raise BabelscopeError(f"{what}: fewer than 2 concepts attested {cfg.min_count} times in the training "
                              "sentences; extract more sentences or lower --min-count")
    pr = train_prototype_probe(train, dev, concepts, n_labels, dim=cfg.proj_dim, epochs=cfg.probe_epochs,
                               lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay, batch=cfg.probe_batch,
                               seed=seed)
    return pr, concepts


def _held_out(d: Sentences, split: tuple[dict[str, str], str], seed: int) -> tuple[Sentences, Sentences]:
    """(few-shot pool, test) sentences of a held-out language."""
    from babelscope.syntax.represent import split_by_sentence

    side, _ = split
    if side:
        where = np.asarray([side.get(s, "other") for s in d.sent_ids])
        return d.take(np.flatnonzero(where == "pool")), d.take(np.flatnonzero(where == "test"))
    hold = split_by_sentence(d.sent_ids, 0.5, seed)
    return d.take(np.flatnonzero(~hold)), d.take(np.flatnonzero(hold))


def _target_probe_accuracy(sup: Sentences, test: Sentences, concepts: np.ndarray, n_labels: int,
                           cfg: MetaConfig, seed: int) -> float:
    """The prototype probe (Eq. 1) trained on the N support sentences alone (no dev: the last epoch)."""
    seen = np.intersect1d(concepts, np.unique(sup.y))
    keep = local_labels(test.y, concepts, n_labels) >= 0
    if not len(seen) or not keep.any():
        return 0.0
    tp = train_prototype_probe(sup, None, seen, n_labels, dim=cfg.proj_dim, epochs=cfg.probe_epochs,
                               lr=cfg.probe_lr, weight_decay=cfg.probe_weight_decay, batch=cfg.probe_batch,
                               seed=seed)
    return float((seen[probe_predict(tp, test.X[keep])] == test.y[keep]).mean())


def _concept(kind: str, cfg: MetaConfig, ctx: dict[str, Any], bar: Any) -> dict[str, Any]:
    """Everything for one concept kind: layer, concept sets, baselines and the seeded META runs."""
    import torch

    from babelscope.syntax import probe as linear
    from babelscope.syntax import represent

    store, tstore, source, metas, tests = ctx["store"], ctx["tstore"], ctx["source"], ctx["metas"], ctx["tests"]
    dev_ids, shots = ctx["dev_ids"], ctx["shots"]
    raw = {layer: ({lang: represent.instances(store, lang, layer, kind) for lang in [source, *metas]},
                   {lang: represent.instances(tstore, lang, layer, kind) for lang in tests})
           for layer in ctx["layers"]}
    names = sorted({lab for pair in raw.values() for d in pair for v in d.values() for lab in set(v.labels.tolist())})
    vocab, L = {lab: i for i, lab in enumerate(names)}, len(names)
    layer_rows = []
    if len(raw) > 1:  # layer = auto: the best English prototype-probe dev accuracy
        scores = {}
        for layer, (inst, _) in raw.items():
            pr, _ = _english_probe(_standardized(inst, {}, vocab)[source], dev_ids, L, cfg, cfg.seed,
                                   f"{source} {kind} layer {layer}")
            scores[layer] = pr["dev_accuracy"]
            layer_rows.append({"concepts": kind, "layer": layer, "english_dev_accuracy": pr["dev_accuracy"]})
        layer = max(scores, key=lambda k: (scores[k], -k))
    else:
        layer = next(iter(raw))
    data = _standardized(*raw[layer], vocab)
    del raw
    tr_en = _split_pud(data[source], dev_ids)[0]
    held, concepts_of = {}, {}
    for t in tests:
        pool, test = _held_out(data[t], ctx["splits"][t], cfg.seed)
        how = ctx["splits"][t][1]
        if max(shots) > len(pool):
            raise BabelscopeError(f"{t}: only {len(pool)} labelled {kind} sentences in its few-shot pool ({how}), "
                                  f"fewer than --shots {max(shots)}; lower --shots or extract more sentences")
        if not len(test):
            raise BabelscopeError(f"{t}: no test sentences ({how}); extract its test split")
        c = concept_set(tr_en.y, np.concatenate([pool.y, test.y]), L, cfg.min_count)
        if len(c) < 2:
            raise BabelscopeError(f"{t}: {len(c)} {kind} concept(s) attested {cfg.min_count} times in both {source} "
                                  f"and {t} after the frequency filter; lower --min-count or extract more sentences")
        held[t], concepts_of[t] = (pool, test, how), c
    tasks, left_out = [], []
    for m in metas:
        tr, dv = _split_pud(data[m], dev_ids)
        c = concept_set(tr_en.y, tr.y, L, cfg.min_count)
        if len(c) < 2 or len(tr) < 2:  # documented fallback: left out of meta-training and listed
            left_out.append({"concepts": kind, "lang": m, "shared_concepts": len(c)})
            continue
        tasks.append(MetaTask(m, tr, dv, c))
    if not tasks:
        raise BabelscopeError(f"no meta-training language shares 2 {kind} concepts attested {cfg.min_count} times "
                              f"with {source}; lower --min-count or extract more sentences")
    clf = linear.fit_probe(tr_en.X, np.asarray(names)[tr_en.y], seed=cfg.seed)  # EN linear probe: deterministic
    en_linear = {}
    for t, (_, test, _) in held.items():
        keep = local_labels(test.y, concepts_of[t], L) >= 0
        en_linear[t] = linear.accuracy(clf, test.X[keep], np.asarray(names)[test.y[keep]])
    per_run, history = [], []
    for r in range(cfg.runs):
        seed = cfg.seed + 1000 * r
        pr, en_concepts = _english_probe(data[source], dev_ids, L, cfg, seed, f"{source} {kind}")
        english = torch.zeros(L, cfg.proj_dim)
        english[torch.from_numpy(en_concepts)] = pr["mu"] @ pr["P"].T
        model, hist = meta_train(english, tasks, L, hidden=data[source].X.shape[1], dim=cfg.proj_dim,
                                 width=cfg.width, dropout=cfg.dropout, epochs=cfg.meta_epochs,
                                 episodes_per_lang=cfg.episodes_per_lang, support=cfg.support, query=cfg.query,
                                 lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay, seed=seed, progress=bar)
        history += [{"concepts": kind, "run": r, "english_probe_dev": pr["dev_accuracy"], **h} for h in hist]
        for i, (t, (pool, test, _)) in enumerate(held.items()):
            c = concepts_of[t]
            yt = local_labels(test.y, c, L)
            english_c = english[torch.from_numpy(c)]
            row = {"concepts": kind, "lang": t, "run": r, "test_instances": int((yt >= 0).sum())}
            per_run.append({**row, "method": "EN-probe", "shots": 0, "accuracy": en_linear[t]})
            order = np.random.default_rng([seed, 41, i]).permutation(len(pool))
            for n in shots:
                if n == 0:
                    per_run.append({**row, "method": "META", "shots": 0,
                                    "accuracy": meta_accuracy(model, english_c, test, yt)})
                    continue
                sup = pool.take(order[:n])  # nested supports: the 5 sentences of N=5 include the one of N=1
                per_run.append({**row, "method": "META", "shots": n, "accuracy": meta_accuracy(
                    model, english_c, test, yt, sup, local_labels(sup.y, c, L))})
                per_run.append({**row, "method": "target-probe", "shots": n,
                                "accuracy": _target_probe_accuracy(sup, test, c, L, cfg, seed + n)})
    langs = {t: {f"{kind}_concepts": len(concepts_of[t]), "pool_sentences": len(pool), "test_sentences": len(test),
                 "split": how} for t, (pool, test, how) in held.items()}
    return {"layer": layer, "per_run": per_run, "history": history, "layer_rows": layer_rows,
            "left_out": left_out, "langs": langs}


def run(cfg: MetaConfig, run_dir, step: str = "syntax-meta", loaded=None) -> dict[str, Any]:
    """Meta-train on the store's languages, then zero- and few-shot concept classification of held-out languages
    against the baselines; writes per-run and summary tables (``RUN_DIR/STEP``). No model is loaded."""
    from tqdm.auto import tqdm

    from babelscope.data.languages import resolve_language
    from babelscope.runs import is_main_process, provenance
    from babelscope.steps import StepRun, check_config
    from babelscope.syntax.represent import Store, split_by_sentence

    kinds, shots = _check_config(check_config(cfg))
    run_dir = Path(run_dir)
    store = Store(run_dir / cfg.store / "store")
    tstore = Store(run_dir / cfg.test_store / "store") if cfg.test_store else store
    source = _match(store, cfg.source, "source")[0]
    if cfg.test_langs in ("all", "", None):
        if tstore is store:
            raise BabelscopeError("--test-langs all needs a separate --test-store; name the held-out languages")
        tests = tstore.languages()
    else:
        tests = _match(tstore, cfg.test_langs, "test")
    if cfg.meta_langs in ("all", "", None):
        metas = [c for c in store.languages() if c != source and (tstore is not store or c not in tests)]
    else:
        metas = [c for c in _match(store, cfg.meta_langs, "meta-training") if c != source]
    if not metas:
        raise BabelscopeError(f"{store.path}: no meta-training language besides {source}; extract more languages")
    model_id = _model_of([store, tstore], [[source, *metas], tests], cfg.model)
    icl, icl_shots = _icl_rows(run_dir, cfg.pos_step, model_id["checksum"], tests)
    inputs = {"stores": _fingerprint([store, tstore]),  # a changed input recomputes
              "icl": json_sha256(icl, 16) if icl else None}
    sr = StepRun(cfg, run_dir, step, loaded)
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:  # config: with the results
        return doc
    if not is_main_process():  # one process computes (nothing here is split over ranks)
        return sr.wait()
    en_ids = store.words(source)["sent_ids"]
    ctx = {"store": store, "tstore": tstore, "source": source, "metas": metas, "tests": tests, "shots": shots,
           "layers": _layer(store, cfg.layer), "splits": {t: _splits(tstore, t, cfg.test_treebank) for t in tests},
           "dev_ids": set(en_ids[split_by_sentence(en_ids, cfg.dev_fraction, cfg.seed)].tolist())}
    total = len(kinds) * cfg.runs * cfg.meta_epochs * cfg.episodes_per_lang * len(metas)
    out = {}
    with tqdm(total=total, desc="meta", unit="episode", leave=False, disable=not is_main_process()) as bar:
        for kind in kinds:
            out[kind] = _concept(kind, cfg, ctx, bar)
    per_run = [r for o in out.values() for r in o["per_run"]]
    summary = _summary(per_run)
    pretrain, pretrain_source = _pretraining(model_id["model"])
    meta_iso = {resolve_language(c).iso639_3 for c in metas}
    lang_rows = []
    for t in tests:
        entry: dict[str, Any] = {"lang": t}
        for o in out.values():
            entry.update(o["langs"][t])
        for setting in ("MONO", "EN"):
            if f"{setting}_mean" in icl.get(t, {}):
                entry[f"icl_{setting.lower()}"] = icl[t][f"{setting}_mean"]
                summary.append({"concepts": "pos", "lang": t, "method": f"ICL-{setting}", "shots": icl_shots or 0,
                                "mean": icl[t][f"{setting}_mean"], "std": icl[t].get(f"{setting}_std", 0.0),
                                "runs": None})
        lang = resolve_language(t)
        in_pre = None if pretrain is None else bool(lang.iso639_1 and lang.iso639_1 in pretrain)
        seen = lang.iso639_3 in meta_iso
        entry.update({"name": lang.name, "in_pretraining": in_pre, "seen_in_meta_training": seen,
                      "mark": ("x" if in_pre is False else "?" if in_pre is None else "") + ("*" if seen else "")})
        lang_rows.append(entry)
    results = {
        "model": model_id["model"], "source": source, "meta_langs": metas, "test_langs": tests,
        "layer": {k: o["layer"] for k, o in out.items()}, "layer_choice": cfg.layer, "shots": shots,
        "runs": cfg.runs, "concepts": kinds, "pretraining_languages": pretrain_source,
        "icl_step": cfg.pos_step if icl else None,
        "marks": {"x": "not among the model's documented pretraining languages",
                  "?": "the model's documentation lists no pretraining languages",
                  "*": "the language (another treebank of it) was seen in meta-training"},
        "meta_langs_left_out": [r for o in out.values() for r in o["left_out"]],
    }
    tables = {"summary": summary, "languages": lang_rows, "per_run": per_run,
              "training": [r for o in out.values() for r in o["history"]]}
    layer_rows = [r for o in out.values() for r in o["layer_rows"]]
    if layer_rows:
        tables["layers"] = layer_rows
    sr.st.write_config(sr.config)  # config and results only now: a bad input above leaves nothing behind
    return sr.write(KIND, results, tables, provenance(store=str(store.path), test_store=str(tstore.path),
                                                      model=model_id))
