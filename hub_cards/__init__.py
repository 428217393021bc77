"""Jinja templates of the Hub cards (rendered with huggingface_hub's ModelCard / DatasetCard)."""
