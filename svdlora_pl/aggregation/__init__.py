"""Merging LoRA adapters of different ranks: the per-module rules (:mod:`~svdlora_pl.aggregation.rules`: stack, SVD
re-factorization, zero-padding), whole adapter directories merged (:func:`svdlora_pl.aggregation.merge.aggregate`,
``svdlora aggregate``) and their report (:mod:`~svdlora_pl.aggregation.report`)."""
