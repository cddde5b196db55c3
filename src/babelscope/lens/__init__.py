"""The latent language per layer (Wendler et al. 2024, "Do Llamas Work in English?"): the logit lens on the
unmodified model, word-translation prompts from a word list, and script shares while reading parallel text."""
