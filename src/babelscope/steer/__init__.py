"""Steering the output language (CLaS-Bench, Gurgurov et al. 2026): difference-of-means directions in the residual
stream, added during generation, against LAPE-neuron steering (Tang et al., ACL 2024). Import-light."""
