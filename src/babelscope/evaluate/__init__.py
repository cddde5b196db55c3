"""Evaluations: per-language perplexity (this package's first capability); benchmarks come later."""
