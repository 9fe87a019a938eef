"""Discrete flow matching: mixture probability paths over tokens, their losses and a CTMC sampler.

Time convention of the toolkit: t = 0 is the source (all tokens masked, or uniform noise tokens),
t = 1 is the data. A token model is called ``model(x_t, t, y=None) -> logits``: x_t int64 [B, ...]
token ids, t float [B] in [0, 1], y int64 labels [B] (``num_classes`` is the null label of
classifier-free guidance), logits float [B, ..., vocab_size], the posterior p_{1|t}(x1 | x_t) per
position. Gat et al., "Discrete Flow Matching" (NeurIPS 2024, arXiv 2407.15595).
"""

from .loss import LOSSES, DiscreteFlowMatchingLoss, call_token_model
from .memoriser import DiscreteMemoriser
from .paths import SOURCES, DiscretePathSample, MixturePath, uniform_draw
from .quantize import UniformQuantizer
from .sampling import CTMC_METHODS, DEFAULT_STEPS, ctmc_sample, sample_categorical
from .schedulers import KAPPA_SCHEDULERS, CosineKappa, KappaScheduler, LinearKappa, PolynomialKappa, get_kappa

__version__ = "0.1.0"

__all__ = [
    "CTMC_METHODS",
    "DEFAULT_STEPS",
    "KAPPA_SCHEDULERS",
    "LOSSES",
    "SOURCES",
    "CosineKappa",
    "DiscreteFlowMatchingLoss",
    "DiscreteMemoriser",
    "DiscretePathSample",
    "KappaScheduler",
    "LinearKappa",
    "MixturePath",
    "PolynomialKappa",
    "UniformQuantizer",
    "call_token_model",
    "ctmc_sample",
    "get_kappa",
    "sample_categorical",
    "uniform_draw",
]
