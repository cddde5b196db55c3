"""Syntax and structural concepts in multilingual LMs (``babelscope syntax extract | probe | otdd | rsa``).

After Xu, Kementchedjhieva, Mirza and Søgaard (2022), "Cross-Linguistic Syntactic Difference in Multilingual
BERT: How Good is It and How Does It Affect Transfer?" (EMNLP 2022), and Xu, Chen, Wang, Yang, Jiang and
Wang (2023), "Are Structural Concepts Universal in Transformer Language Models? Towards Interpretable
Cross-Lingual Generalization" (Findings of EMNLP 2023).

Modules (plain functions over plain arrays; import what you use):

* :mod:`.treebanks` -- UD sentences per language (PUD, the embedded PUD sample, any UD folder or file);
* :mod:`.represent` -- word vectors from subword hidden states, the streaming store, relation/POS instances;
* :mod:`.otdd` -- optimal-transport dataset distance between labelled relation sets;
* :mod:`.rsa` -- concept prototypes, RDMs, RSA, Procrustes, split-half ceilings;
* :mod:`.probe` -- linear probes and the cross-lingual transfer matrix;
* :mod:`.typology` -- URIEL syntax features, Mantel tests, gradient-boosting importances;
* :mod:`.meta` -- meta-learned concept alignment: zero- and few-shot concepts in new languages (2023, Sec. 6);
* :mod:`.steps` -- the steps (configs and ``run`` functions) behind the CLI and experiments.
"""
