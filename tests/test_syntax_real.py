"""babelscope.syntax on the real default model (Gemma 3 270M) and the real multilingual encoder, on a few
sentences of the embedded PUD sample."""

from __future__ import annotations

import numpy as np
import pytest

from babelscope.syntax import represent, steps

pytestmark = pytest.mark.slow


def test_decoder_massive_dimension_and_standardisation(default_model, tmp_path):
    doc = steps.run_extract(steps.ExtractConfig(langs="en,ja", layers="9", max_sentences=12, batch_size=12),
                            tmp_path, loaded=lambda: default_model)
    res = doc["results"]
    assert res["pooling"] == "last" and res["kind"] == "causal"
    assert all(r["words_without_token"] == 0 for r in doc["tables"]["per_language"]["rows"])
    share = doc["tables"]["per_layer"]["rows"][0]["top_dimension_share"]
    assert share > 0.3  # one "massive activation" dimension carries a large part of all distance
    store = represent.Store(tmp_path / "syntax-extract" / "store")
    sets = [represent.instances(store, lang, 9, "pos") for lang in ("eng", "jpn")]
    mean, std = represent.standardizer(sets)
    assert represent.top_dimension_share(represent.standardize(sets[0], mean, std).X) < 0.05
    r = steps.run_rsa(steps.RsaConfig(min_count=5, n_perm=50, concepts="pos"), tmp_path)
    pair = r["tables"]["pairs"]["rows"][0]
    assert 0 < pair["rsa"] <= 1 and pair["concepts"] >= 5


def test_encoder_first_subword_words_and_probe(encoder_dir, tmp_path):
    cfg = steps.ExtractConfig(model=str(encoder_dir), langs="en,de", layers="0,6", max_sentences=16)
    doc = steps.run_extract(cfg, tmp_path)
    assert doc["results"]["pooling"] == "first" and doc["results"]["kind"] == "encoder"
    rows = doc["tables"]["per_language"]["rows"]
    assert all(r["words_without_token"] == 0 and r["relations"] > 200 for r in rows)
    store = represent.Store(tmp_path / "syntax-extract" / "store")
    assert store.vectors("eng", 6).shape[1] == 384 and np.isfinite(store.vectors("deu", 6)).all()
    p = steps.run_probe(steps.ProbeConfig(concepts="pos", max_iter=100), tmp_path)
    by_layer = {s["layer"]: s for s in p["tables"]["per_layer"]["rows"]}
    assert by_layer[6]["accuracy"] > by_layer[6]["majority"] + 0.2
