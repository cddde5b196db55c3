"""Language capability transfer (Zhao et al. 2024, "LLaMA Beyond English"; Zhang et al. 2024 region freezing):
vocabulary extension (:mod:`.vocab`), further pretraining with forgetting curves and region freezing
(:mod:`.pretrain` on the loop of :mod:`.loop`), instruction tuning (:mod:`.sft`). Import-light."""
