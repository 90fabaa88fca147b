"""llmkit: config-driven fine-tuning of BERT- and GPT-style classifiers (full, LoRA, prefix, prompt)."""

__version__ = "0.1.0"
