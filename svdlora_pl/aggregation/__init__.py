"""Merging LoRA adapters of different ranks: the rules (stack, SVD re-factorization, zero-padding) and their report
(``svdlora aggregate``)."""
