"""The embedded default: the tiny pretrained Qwen2 model, its tokenizer, its pretraining, and the bundled datasets."""
