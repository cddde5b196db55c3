"""Linguistic regions (Zhang et al., ACL 2024, "Unveiling Linguistic Regions in Large Language Models").

* :mod:`~babelscope.models.params`: which weights are scored, read from the model's blocks;
* :mod:`~babelscope.regions.importance`: per-language first-order Taylor importance ``S = θ ⊙ ∂L/∂θ``;
* :mod:`~babelscope.regions.select`: Top-k / Bottom-k / Random-k, core and monolingual regions, overlaps;
* :mod:`~babelscope.regions.apply`: apply a region or perturb a norm dimension, restoring the exact weights;
* :mod:`~babelscope.regions.ablate` and :mod:`~babelscope.regions.scan`: perplexity after removal / perturbation.
"""
