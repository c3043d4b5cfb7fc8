"""Bring models in from nanochat (nanochat.py) and take them out to Hugging Face transformers (hf.py)."""
