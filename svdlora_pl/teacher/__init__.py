"""Teacher updates: synthesized from a LoRA adapter, or ΔW = W_ft − W_base of a full fine-tune; their rank-r SVD factors,
reports and figures (``svdlora synthesize``, ``svdlora factorize``)."""
