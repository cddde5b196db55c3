"""Big-model inference (``--device-map``): a memory cap that sends part of the blocks to the disk gives the
single-device results, and bad placements are refused before anything loads.

Tolerance. On the CPU the offloaded blocks run the same float32 kernels on the same bits (Accelerate reads them
back from the same safetensors file), in the same order, so the results are expected to be equal; the bound
allows for a kernel taking another vectorised path on differently aligned copies of the weights, which reorders
a float32 reduction: a few ulps (2^-23 = 1.2e-7 relative each) per matrix product, compounding over a handful of
blocks, stays below 1e-5 relative. A wrong placement (a block skipped, a weight read from the wrong file, a
stale KV cache row) changes these numbers by far more than that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SENTENCES, build_tiny

RTOL = 1e-5  # see the module docstring
# embedding + LM head (tied) fit; every block goes to the disk (Accelerate keeps room for one block to run)
TINY_CAP = "cpu=100000"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-place")
    build_tiny("gemma3", out)
    return out


@pytest.fixture(scope="module")
def pair(tiny, tmp_path_factory):
    from babelscope.models import load_model

    placed = load_model(str(tiny), device_map="sequential", max_memory=TINY_CAP,
                        offload_dir=str(tmp_path_factory.mktemp("offload")))
    return load_model(str(tiny)), placed


def _close(got: float, want: float) -> None:
    assert abs(got - want) <= RTOL * max(abs(want), 1e-30), (got, want)


def test_the_cap_puts_blocks_on_the_disk(pair):
    (_, _, info0), (model, _, info) = pair
    assert info0.device_map is None
    assert "disk" in info.device_map.values() and "cpu" in info.device_map.values()
    assert any(p.device.type == "meta" for p in model.model.layers.parameters())  # really offloaded
    assert info.checksum == info0.checksum


def test_scores_and_hidden_states_match_one_device(pair):
    from babelscope.models.engine import Engine

    (m0, tok, _), (m1, _, _) = pair
    e0, e1 = Engine(m0, tok, progress=False, batch_size=3), Engine(m1, tok, progress=False, batch_size=3)
    for a, b in zip(e1.rolling_loglikelihood(SENTENCES, window=16), e0.rolling_loglikelihood(SENTENCES, window=16),
                    strict=True):
        _close(a.nll, b.nll)
        assert a.tokens == b.tokens
    # choices sharing their context: the prefix KV cache path (checked to run)
    reqs = [(SENTENCES[0][:30], SENTENCES[0][30:]), (SENTENCES[0][:30], " the cat"), (SENTENCES[0][:30], " a dog"),
            ("Le renard", " brun"), ("", SENTENCES[1])]
    for a, b in zip(e1.loglikelihood(reqs), e0.loglikelihood(reqs), strict=True):
        _close(a.logprob, b.logprob)
        assert a.greedy == b.greedy
    assert e1.stats["body_tokens"] < e1.stats["input_tokens"]  # a prefix ran once for several rows
    prompts = ["The quick brown", "Le renard"]  # greedy generation (eval respond) through the offload hooks
    assert e1.generate(prompts, max_new_tokens=6) == e0.generate(prompts, max_new_tokens=6)
    h0, h1 = e0.hidden_states(SENTENCES, [0, 1, 3]), e1.hidden_states(SENTENCES, [0, 1, 3])
    for a, b in zip(h1, h0, strict=True):
        np.testing.assert_allclose(a["hidden"], b["hidden"], rtol=RTOL, atol=RTOL * float(np.abs(b["hidden"]).max()))


def test_activation_counts_and_lens_match_one_device(pair):
    from babelscope.lens.logit_lens import lens_pass
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.neurons.lape import count_activations

    (m0, tok, _), (m1, _, _) = pair
    seqs = [[2] + tok(s, add_special_tokens=False)["input_ids"][:20] for s in SENTENCES]
    c0, n0 = count_activations(m0, ffn_modules(m0), seqs, batch_size=3)
    c1, n1 = count_activations(m1, ffn_modules(m1), seqs, batch_size=3)
    assert n0 == n1 and torch.equal(c0, c1)  # integer counts of signs: exact unless a value sits at 0 within ulps
    positions = [list(range(len(s))) for s in seqs]
    top = lambda probs, owner: probs.max(dim=-1).values[:, None]  # noqa: E731
    l0 = lens_pass(m0, seqs, positions, [1, 2, 3], top)
    l1 = lens_pass(m1, seqs, positions, [1, 2, 3], top)
    torch.testing.assert_close(l1, l0, rtol=RTOL, atol=1e-7)


def test_region_and_dimension_changes_reach_offloaded_blocks_and_are_undone(pair):
    from babelscope.models.engine import Engine
    from babelscope.models.params import find_norm, gamma_offset, scored_parameters
    from babelscope.models.placement import writable_weights
    from babelscope.regions.apply import applied_region, perturbed_dimension

    (m0, tok, _), (m1, _, _) = pair
    p0, p1 = scored_parameters(m0), scored_parameters(m1)
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in p0.items() if p.ndim == 2}

    def nll(model):
        e = Engine(model, tok, progress=False)
        return [s.nll for s in e.rolling_loglikelihood(SENTENCES, window=16)]

    base = nll(m1)
    with applied_region(p0, masks) as c0:
        want = nll(m0)
    with applied_region(p1, masks, model=m1) as c1:
        got = nll(m1)
    assert c0 == c1 and c1.changed > 0
    for a, b, z in zip(got, want, base, strict=True):
        _close(a, b)
        assert abs(a - z) > 1e-3 * abs(z)  # the region really changed the offloaded blocks
    for a, b in zip(nll(m1), base, strict=True):
        assert a == b  # undone exactly
    name0, norm0 = find_norm(m0, 1, "post_attention_layernorm")
    name1, norm1 = find_norm(m1, 1, "post_attention_layernorm")
    assert gamma_offset(norm1) == gamma_offset(norm0) == 1.0
    with perturbed_dimension(norm0, 5, "zero"):
        want = nll(m0)
    with writable_weights(m1, [name1]) as w, perturbed_dimension(norm1, 5, "zero", weight=w[name1]):
        got = nll(m1)
    for a, b in zip(got, want, strict=True):
        _close(a, b)
    assert nll(m1) == base


def test_ppl_step_offloaded_equals_one_device(tiny, tmp_path):
    from babelscope.evaluate.perplexity import PplConfig, run

    common = dict(model=str(tiny), langs="eng,fra", max_units=3, window=16)
    one = run(PplConfig(**common), tmp_path / "one", step="ppl")
    off = run(PplConfig(**common, device_map="sequential", max_memory=TINY_CAP, offload_dir=str(tmp_path / "o")),
              tmp_path / "off", step="ppl")
    rows0, rows1 = one["tables"]["per_language"]["rows"], off["tables"]["per_language"]["rows"]
    assert len(rows0) == len(rows1) == 2
    for a, b in zip(rows1, rows0, strict=True):
        _close(a["ppl"], b["ppl"])


# ------------------------------------------------------------------------------------------------ bad input
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "babelscope.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_bad_placements_exit_2_with_one_line_and_write_nothing(tiny, tmp_path):
    from transformers import DistilBertConfig

    enc = tmp_path / "distilbert"
    DistilBertConfig(vocab_size=100, dim=32, hidden_dim=64, n_layers=2, n_heads=2).save_pretrained(enc)
    locked = tmp_path / "a-file"  # a folder under a file cannot be made, even by root (which ignores modes)
    locked.write_text("")
    cases = [
        (["--model", str(enc), "--device-map", "auto"], ["DistilBertModel", "cannot split", "--device"]),
        (["--device-map", "sequential", "--max-memory", "cpu=10000", "--offload-dir", str(tmp_path / "o")],
         ["cpu=10000", "one block", "at least"]),
        (["--device-map", "sequential", "--max-memory", TINY_CAP, "--offload-dir", str(locked / "x")],
         [str(locked / "x"), "not a writable folder"]),
        (["--device-map", "sequential", "--max-memory", TINY_CAP], ["--offload-dir", "disk"]),
        (["--device-map", "everywhere"], ["everywhere", "auto, balanced, sequential"]),
        (["--device-map", "auto", "--max-memory", "cpu=lots"], ["lots", "20GiB"]),
        (["--offload-dir", str(tmp_path / "o")], ["only with --device-map"]),
    ]
    for extra, words in cases:
        args = ["syntax", "extract"] if extra[1] == str(enc) else ["ppl", "--max-units", "1"]
        model = [] if "--model" in extra else ["--model", str(tiny)]
        proc = _cli([*args, *model, *extra, "--run-dir", str(tmp_path / "run")], tmp_path)
        err = proc.stderr.strip()
        assert proc.returncode == 2, (extra, proc.stderr[-2000:])
        assert len(err.splitlines()) == 1 and all(w in err for w in words), (extra, err)
        assert not (tmp_path / "run").exists() and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_real_default_with_blocks_on_disk_matches_one_device(default_model, tmp_path):
    """Gemma 3 270M with the CPU capped at 900 MiB in float32: the embedding (= the tied head, 640 MiB) and a few
    blocks stay in memory, the rest are read from the disk block by block."""
    from babelscope.models import load_model
    from babelscope.models.engine import Engine
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.neurons.lape import count_activations

    m0, tok, _ = default_model
    m1, _, info = load_model("gemma-3-270m", device_map="sequential", max_memory="cpu=900MiB",
                             offload_dir=str(tmp_path / "off"))
    on_disk = [k for k, v in info.device_map.items() if v == "disk"]
    assert on_disk and any(k.startswith("model.layers") for k in on_disk)
    e0, e1 = Engine(m0, tok, progress=False, batch_size=4), Engine(m1, tok, progress=False, batch_size=4)
    texts = SENTENCES[:4]
    for a, b in zip(e1.rolling_loglikelihood(texts, window=32), e0.rolling_loglikelihood(texts, window=32),
                    strict=True):
        _close(a.nll, b.nll)
    reqs = [("The capital of France is", " Paris"), ("The capital of France is", " Rome"),
            ("The capital of France is", " Berlin")]
    for a, b in zip(e1.loglikelihood(reqs), e0.loglikelihood(reqs), strict=True):
        _close(a.logprob, b.logprob)
    h0, h1 = e0.hidden_states(texts, [0, 9, 18]), e1.hidden_states(texts, [0, 9, 18])
    for a, b in zip(h1, h0, strict=True):  # massive-activation dimensions: relative to each layer's largest value
        for layer in range(3):
            scale = float(np.abs(b["hidden"][layer]).max())
            np.testing.assert_allclose(a["hidden"][layer], b["hidden"][layer], rtol=RTOL, atol=RTOL * scale)
    seqs = [[2] + tok(s, add_special_tokens=False)["input_ids"] for s in texts]
    c0, n0 = count_activations(m0, ffn_modules(m0), seqs, batch_size=4)
    c1, n1 = count_activations(m1, ffn_modules(m1), seqs, batch_size=4)
    assert n0 == n1
    # a GELU output within ulps of 0 may flip sign under reordered sums: allow a handful in 18 x 2048 x ~60 tokens
    assert int((c0 - c1).abs().sum()) <= 4


def _dp_worker():
    """Two processes, each with the model on its own device map (blocks on the disk, its own offload subfolder),
    share the ppl step's requests."""
    import os

    from babelscope.evaluate.perplexity import PplConfig, run
    from conftest import assert_two_processes

    assert_two_processes()
    out = Path(os.environ["BABELSCOPE_TEST_OUT"])
    run(PplConfig(model=os.environ["BABELSCOPE_TEST_MODEL"], langs="eng,fra,deu", max_units=3, window=16,
                  device_map="sequential", max_memory=TINY_CAP, offload_dir=str(out / "offload")), out / "run", "ppl")


def test_data_parallel_with_a_device_map_matches_one_device(tiny, tmp_path):
    from babelscope.evaluate.perplexity import PplConfig, run
    from conftest import launch_two_processes

    launch_two_processes("test_placement", "_dp_worker",
                         {"BABELSCOPE_TEST_OUT": str(tmp_path / "dp"), "BABELSCOPE_TEST_MODEL": str(tiny)})
    assert sorted(p.name for p in (tmp_path / "dp" / "offload").iterdir()) == ["rank0", "rank1"]
    one = run(PplConfig(model=str(tiny), langs="eng,fra,deu", max_units=3, window=16), tmp_path / "one", "ppl")
    import json

    dp = json.loads((tmp_path / "dp" / "run" / "ppl" / "results.json").read_text())
    rows0, rows1 = one["tables"]["per_language"]["rows"], dp["tables"]["per_language"]["rows"]
    assert len(rows0) == len(rows1) == 3
    for a, b in zip(rows1, rows0, strict=True):
        _close(a["ppl"], b["ppl"])
