"""Models: the LARP tokenizer (+ AR prior), its discriminator."""

from larp.models.discriminator import Discriminator, TransformerDiscriminator
from larp.models.prior import GPTCPrior, prior_loss, scheduled_sampling_ratio
from larp.models.svq import SVQ, SVQOutput
from larp.models.tokenizer import LARPTokenizer, TokenizerOutput

__all__ = [
    "SVQ",
    "Discriminator",
    "GPTCPrior",
    "LARPTokenizer",
    "SVQOutput",
    "TokenizerOutput",
    "TransformerDiscriminator",
    "prior_loss",
    "scheduled_sampling_ratio",
]
