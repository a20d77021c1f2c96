"""Training: the LightningModule (``QwenLoRAModule``), the DataModule (``QADataModule``), QA records and tokenization,
sampling, losses, metrics, answer matching, and model loading."""
