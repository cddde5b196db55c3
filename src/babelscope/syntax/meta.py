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
suite (``babelscope eval pos``: MONO and EN demonstrations) where the run has them (joined by the step).

This module is the method: word vectors in, accuracies out, no run directory and no printing. From a notebook::

    raw = {layer: ({lang: represent.instances(store, lang, layer, "pos") for lang in ("en", "ja")},
                   {"de": represent.instances(store, "de", layer, "pos")})}
    setup = MetaSetup(source="en", metas=["ja"], tests=["de"], dev_ids=..., splits={"de": ({}, "hash")}, shots=[0, 5])
    result = align_concepts("pos", raw, setup, MetaConfig())   # result.per_run: one row per run, method and N

The step (store reading, the in-context rows of a ``pos`` step, the results files) is
:func:`babelscope.syntax.steps.run_meta`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from babelscope.errors import BabelscopeError
from babelscope.syntax.configs import MetaConfig

CONCEPTS = ("pos", "relation")

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


def pooled_stats(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation pooled over every set (float64 sums, no concatenation)."""
    n = sum(len(X) for X in sets)
    total = sum(X.sum(0, dtype=np.float64) for X in sets)
    mean = total / n
    var = sum(((X - mean) ** 2).sum(0, dtype=np.float64) for X in sets) / n
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)


def summarize(per_run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation (ddof 1) of the per-run accuracies of each (concepts, lang, method, shots)."""
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
    mean, std = pooled_stats([v.X for v in inst.values()])
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


@dataclass
class MetaSetup:
    """Who is trained and who is tested: the ``source`` language of the prototypes, the meta-training
    languages ``metas``, the held-out ``tests``, the source and meta-training sentences held out as dev
    (``dev_ids``), each held-out language's split (``splits[lang]``: sent_id -> ``pool`` / ``test`` / other and
    how it was made; an empty map = a seeded hash split) and the few-shot sentence counts ``shots``."""

    source: str
    metas: list[str]
    tests: list[str]
    dev_ids: set[str]
    splits: dict[str, tuple[dict[str, str], str]]
    shots: list[int]


@dataclass
class ConceptResult:
    """One concept kind's outcome: the layer used, one row per run / language / method / N (``per_run``), the
    meta-training curve (``history``), the English dev accuracy per layer when the layer was chosen
    (``layer_rows``), meta-training languages left out, and the held-out languages' counts (``langs``)."""

    layer: int
    per_run: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    layer_rows: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    langs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _choose_layer(kind: str, raw: dict, setup: MetaSetup, cfg: MetaConfig, vocab: dict[str, int]
                  ) -> tuple[int, list[dict[str, Any]]]:
    """The one layer of ``raw``, or (layer = auto) the layer with the best English prototype-probe dev accuracy
    (ties: the lower layer) and that accuracy per layer."""
    if len(raw) == 1:
        return next(iter(raw)), []
    scores, rows = {}, []
    for layer, (inst, _) in raw.items():
        pr, _ = _english_probe(_standardized(inst, {}, vocab)[setup.source], setup.dev_ids, len(vocab), cfg,
                               cfg.seed, f"{setup.source} {kind} layer {layer}")
        scores[layer] = pr["dev_accuracy"]
        rows.append({"concepts": kind, "layer": layer, "english_dev_accuracy": pr["dev_accuracy"]})
    return max(scores, key=lambda k: (scores[k], -k)), rows


def _held_out_sets(kind: str, data: dict[str, Sentences], tr_en: Sentences, setup: MetaSetup, cfg: MetaConfig,
                   n_labels: int) -> tuple[dict[str, tuple[Sentences, Sentences, str]], dict[str, np.ndarray]]:
    """Each held-out language's (few-shot pool, test, how split) and its concept set shared with the source."""
    held, concepts_of = {}, {}
    for t in setup.tests:
        pool, test = _held_out(data[t], setup.splits[t], cfg.seed)
        how = setup.splits[t][1]
        if max(setup.shots) > len(pool):
            raise BabelscopeError(f"{t}: only {len(pool)} labelled {kind} sentences in its few-shot pool ({how}), "
                                  f"fewer than --shots {max(setup.shots)}; lower --shots or extract more sentences")
        if not len(test):
            raise BabelscopeError(f"{t}: no test sentences ({how}); extract its test split")
        c = concept_set(tr_en.y, np.concatenate([pool.y, test.y]), n_labels, cfg.min_count)
        if len(c) < 2:
            raise BabelscopeError(f"{t}: {len(c)} {kind} concept(s) attested {cfg.min_count} times in both "
                                  f"{setup.source} and {t} after the frequency filter; lower --min-count or extract "
                                  "more sentences")
        held[t], concepts_of[t] = (pool, test, how), c
    return held, concepts_of


def _meta_tasks(kind: str, data: dict[str, Sentences], tr_en: Sentences, setup: MetaSetup, cfg: MetaConfig,
                n_labels: int) -> tuple[list[MetaTask], list[dict[str, Any]]]:
    """The meta-training languages sharing 2 concepts with the source, and those left out (listed)."""
    tasks, left_out = [], []
    for m in setup.metas:
        tr, dv = _split_pud(data[m], setup.dev_ids)
        c = concept_set(tr_en.y, tr.y, n_labels, cfg.min_count)
        if len(c) < 2 or len(tr) < 2:  # documented fallback: left out of meta-training and listed
            left_out.append({"concepts": kind, "lang": m, "shared_concepts": len(c)})
            continue
        tasks.append(MetaTask(m, tr, dv, c))
    if not tasks:
        raise BabelscopeError(f"no meta-training language shares 2 {kind} concepts attested {cfg.min_count} times "
                              f"with {setup.source}; lower --min-count or extract more sentences")
    return tasks, left_out


def _run_rows(row: dict[str, Any], model: MetaAligner, english_c: Any, pool: Sentences, test: Sentences,
              concepts: np.ndarray, n_labels: int, shots: list[int], cfg: MetaConfig, seed: int, order: np.ndarray
              ) -> list[dict[str, Any]]:
    """META (Eq. 2 at N = 0, Eq. 3 above) and the target probe at each N of one run on one held-out language."""
    yt = local_labels(test.y, concepts, n_labels)
    rows = []
    for n in shots:
        if n == 0:
            rows.append({**row, "method": "META", "shots": 0, "accuracy": meta_accuracy(model, english_c, test, yt)})
            continue
        sup = pool.take(order[:n])  # nested supports: the 5 sentences of N=5 include the one of N=1
        rows.append({**row, "method": "META", "shots": n, "accuracy": meta_accuracy(
            model, english_c, test, yt, sup, local_labels(sup.y, concepts, n_labels))})
        rows.append({**row, "method": "target-probe", "shots": n,
                     "accuracy": _target_probe_accuracy(sup, test, concepts, n_labels, cfg, seed + n)})
    return rows


def align_concepts(kind: str, raw: dict[int, tuple[dict[str, Any], dict[str, Any]]], setup: MetaSetup,
                   cfg: MetaConfig, bar: Any = None) -> ConceptResult:
    """Everything for one concept kind (``pos`` or ``relation``): the layer, the concept sets, the baselines and
    the seeded META runs (Eqs. 1-3). ``raw[layer]`` holds the instances (:func:`babelscope.syntax.represent.
    instances`) of the source and meta-training languages, then of the held-out ones; with several layers the
    one with the best English prototype-probe dev accuracy is used. ``cfg`` gives the hyperparameters (its store
    and step fields are not read); ``bar`` is updated once per meta-training episode."""
    import torch

    from babelscope.syntax import probe as linear

    source = setup.source
    names = sorted({lab for pair in raw.values() for d in pair for v in d.values() for lab in set(v.labels.tolist())})
    vocab, L = {lab: i for i, lab in enumerate(names)}, len(names)
    layer, layer_rows = _choose_layer(kind, raw, setup, cfg, vocab)
    data = _standardized(*raw[layer], vocab)
    tr_en = _split_pud(data[source], setup.dev_ids)[0]
    held, concepts_of = _held_out_sets(kind, data, tr_en, setup, cfg, L)
    tasks, left_out = _meta_tasks(kind, data, tr_en, setup, cfg, L)
    clf = linear.fit_probe(tr_en.X, np.asarray(names)[tr_en.y], seed=cfg.seed)  # EN linear probe: deterministic
    en_linear = {}
    for t, (_, test, _) in held.items():
        keep = local_labels(test.y, concepts_of[t], L) >= 0
        en_linear[t] = linear.accuracy(clf, test.X[keep], np.asarray(names)[test.y[keep]])
    per_run, history = [], []
    for r in range(cfg.runs):
        seed = cfg.seed + 1000 * r
        pr, en_concepts = _english_probe(data[source], setup.dev_ids, L, cfg, seed, f"{source} {kind}")
        english = torch.zeros(L, cfg.proj_dim)
        english[torch.from_numpy(en_concepts)] = pr["mu"] @ pr["P"].T
        model, hist = meta_train(english, tasks, L, hidden=data[source].X.shape[1], dim=cfg.proj_dim,
                                 width=cfg.width, dropout=cfg.dropout, epochs=cfg.meta_epochs,
                                 episodes_per_lang=cfg.episodes_per_lang, support=cfg.support, query=cfg.query,
                                 lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay, seed=seed, progress=bar)
        history += [{"concepts": kind, "run": r, "english_probe_dev": pr["dev_accuracy"], **h} for h in hist]
        for i, (t, (pool, test, _)) in enumerate(held.items()):
            c = concepts_of[t]
            row = {"concepts": kind, "lang": t, "run": r,
                   "test_instances": int((local_labels(test.y, c, L) >= 0).sum())}
            per_run.append({**row, "method": "EN-probe", "shots": 0, "accuracy": en_linear[t]})
            order = np.random.default_rng([seed, 41, i]).permutation(len(pool))
            per_run += _run_rows(row, model, english[torch.from_numpy(c)], pool, test, c, L, setup.shots, cfg, seed,
                                 order)
    langs = {t: {f"{kind}_concepts": len(concepts_of[t]), "pool_sentences": len(pool), "test_sentences": len(test),
                 "split": how} for t, (pool, test, how) in held.items()}
    return ConceptResult(layer, per_run, history, layer_rows, left_out, langs)
