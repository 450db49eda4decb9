"""Checkpoint conversion: Hugging Face transformers <-> our models (`research.convert.hf`)."""
