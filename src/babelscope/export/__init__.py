"""Results in other tools' formats: lm-evaluation-harness's files and Every Eval Ever records."""
