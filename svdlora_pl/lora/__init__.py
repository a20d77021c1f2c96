"""LoRA itself: settings and PEFT wrapping, layer discovery, PEFT adapter files, factor files, initializers and their
math, and the rank-2r conversion of residual adapters."""
