"""Meta-training throughput: episodes per second of ``babelscope.syntax.meta.meta_train`` against a plain PyTorch
loop of the same network and the same episodes (the way the official code runs an episode: per-sentence tensors
concatenated, labels remapped token by token in Python, distances through an expanded (n, k, d) difference,
losses via a masked log-softmax gather).

    python benchmarks/bench_meta.py [--hidden 640] [--langs 20] [--sentences 150] [--episodes 10]

Synthetic word vectors of realistic size (Gemma 3 270M: 640 dimensions; 20 words per sentence, 17 concepts).
The last line is ``ratio X`` = ours / plain episodes per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from babelscope.syntax import meta


def synthetic(langs: int, sentences: int, hidden: int, labels: int, seed: int = 0) -> list[meta.MetaTask]:
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(langs):
        n = sentences * 20
        X = rng.standard_normal((n, hidden)).astype(np.float32)
        y = rng.integers(0, labels, n)
        ids = np.repeat([f"{i}-{k:04d}" for k in range(sentences)], 20)
        data = meta.group_by_sentence(X, np.asarray([f"L{v:02d}" for v in y]), ids,
                                      {f"L{v:02d}": v for v in range(labels)})
        cut = int(0.8 * len(data))
        tasks.append(meta.MetaTask(f"l{i}", data.take(np.arange(cut)), data.take(np.arange(cut, len(data))),
                                   np.arange(labels)))
    return tasks


def plain_loop(english, tasks, labels, *, hidden, epochs, episodes_per_lang, support, query, seed=0):
    """The same network, optimiser and episodes, written as a straightforward PyTorch loop."""
    torch.manual_seed(seed)
    model = meta.MetaAligner(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    rng = np.random.default_rng([seed, 29])
    per_sentence = [[torch.tensor(t.train.X[t.train.start[i]:t.train.start[i + 1]]) for i in range(len(t.train))]
                    for t in tasks]
    per_labels = [[t.train.y[t.train.start[i]:t.train.start[i + 1]].tolist() for i in range(len(t.train))]
                  for t in tasks]

    def dist(x, y):
        n, m, d = x.size(0), y.size(0), x.size(1)
        return torch.pow(x.unsqueeze(1).expand(n, m, d) - y.unsqueeze(0).expand(n, m, d), 2).sum(2)

    def loss_of(logits, y):
        log_p = torch.log_softmax(logits, dim=-1)
        mask = y != -1
        return -log_p[torch.arange(len(y)), y.clamp(min=0)][mask].mean()

    for _ in range(epochs):
        model.train()
        schedule = rng.permutation(np.repeat(np.arange(len(tasks)), episodes_per_lang))
        for k in schedule:
            n = len(tasks[k].train)
            s, q = min(support, n // 2), min(query, n - min(support, n // 2))
            pick = rng.choice(n, size=s + q, replace=False)
            lmap = {int(c): j for j, c in enumerate(tasks[k].concepts)}
            xs = torch.cat([per_sentence[k][i] for i in pick[:s]])
            xq = torch.cat([per_sentence[k][i] for i in pick[s:]])
            ys = torch.LongTensor([lmap.get(v, -1) for i in pick[:s] for v in per_labels[k][i]])
            yq = torch.LongTensor([lmap.get(v, -1) for i in pick[s:] for v in per_labels[k][i]])
            protos_en = english[torch.from_numpy(tasks[k].concepts)]
            opt.zero_grad()
            zs, zq = model.phi(xs), model.phi(xq)
            e = model.adaptor(protos_en)
            refined = []
            for j in range(len(e)):
                members = zs[ys == j]
                refined.append((e[j] + members.sum(0)) / (1 + len(members)))
            loss = loss_of(-dist(zq, e), yq) + loss_of(-dist(zq, torch.stack(refined)), yq)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for t in tasks:
                lmap = {int(c): j for j, c in enumerate(t.concepts)}
                yd = torch.LongTensor([lmap.get(int(v), -1) for v in t.dev.y])
                logits = -dist(model.phi(torch.tensor(t.dev.X)), model.adaptor(english[torch.from_numpy(t.concepts)]))
                _ = (logits.argmax(1) == yd)[yd != -1].float().mean()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--langs", type=int, default=20)
    parser.add_argument("--sentences", type=int, default=150)
    parser.add_argument("--episodes", type=int, default=10, help="episodes per language and epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    labels = 17
    tasks = synthetic(args.langs, args.sentences, args.hidden, labels)
    english = torch.randn(labels, 64)
    episodes = args.langs * args.episodes * args.epochs
    kw = dict(hidden=args.hidden, epochs=args.epochs, episodes_per_lang=args.episodes, support=20, query=30)
    warm = dict(kw, epochs=1, episodes_per_lang=1)
    meta.meta_train(english, tasks, labels, seed=0, **warm)  # first-call costs (allocator, kernels) out of the timing
    plain_loop(english, tasks, labels, seed=0, **warm)
    ours_t, plain_t = [], []
    for _ in range(args.repeats):  # interleaved, best of N for each
        t0 = time.perf_counter()
        meta.meta_train(english, tasks, labels, seed=0, **kw)
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_loop(english, tasks, labels, seed=0, **kw)
        plain_t.append(time.perf_counter() - t0)
    ours, plain = episodes / min(ours_t), episodes / min(plain_t)
    print(f"threads {torch.get_num_threads()}, hidden {args.hidden}, {args.langs} languages x {args.sentences} "
          f"sentences, {episodes} episodes of 20 + 30 sentences")
    print(f"babelscope meta_train: {ours:.1f} episodes/s (best of {args.repeats})")
    print(f"plain PyTorch loop:    {plain:.1f} episodes/s (best of {args.repeats})")
    print(f"ratio {ours / plain:.2f}")


if __name__ == "__main__":
    main()
