"""LARP: holistic video tokenizer with a learned AR prior, AR generator and FVD evaluation."""

__version__ = "0.1.0"
