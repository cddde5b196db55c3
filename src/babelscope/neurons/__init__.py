"""Language-specific neurons (Tang et al., ACL 2024): activation probabilities, LAPE selection, deactivation
and the overlap with the linguistic regions. Import-light: the modules load torch when used."""
