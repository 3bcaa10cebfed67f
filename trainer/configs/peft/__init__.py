"""Parameter-efficient fine-tuning switches: a frozen embedding, LoRA."""
