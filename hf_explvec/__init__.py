"""hf_explvec: explainability vectors for CLIP image classifiers."""

__version__ = "0.1.0.dev0"
