"""The linear algebra of LoRA updates: exact SVD of ΔW = s·B·A from its factors, spectrum metrics, dense and
randomized SVD, Cholesky QR, subspace angles. Torch only; nothing here forms an out×in matrix unless asked to."""
