"""LARP: holistic video tokenizer with a learned AR prior, AR generator and FVD evaluation.

The model classes are imported lazily so that `larp --help` and the workflow start without loading torch.
"""

__version__ = "0.1.0"

_MODELS = {
    "LARPTokenizer": "larp.models.tokenizer",
    "Discriminator": "larp.models.discriminator",
    "LARPGenerator": "larp.models.generator",
}
__all__ = list(_MODELS)


def __getattr__(name: str):
    if name in _MODELS:
        import importlib

        module = importlib.import_module(_MODELS[name])
        return getattr(module, "TransformerDiscriminator" if name == "Discriminator" else name)
    raise AttributeError(f"module 'larp' has no attribute {name!r}")
