"""Normalizing flows from affine coupling, permutation, ActNorm and invertible linear layers.

Direction: ``forward`` maps data to noise, ``inverse`` maps noise to data.
"""

from .actnorm import ActNorm
from .base import FlowLayer
from .checkpoint import HubUnreachableError, load_flow, save_flow
from .coupling import AffineCoupling, ConditionerMLP, alternating_mask
from .flow import MIXINGS, Flow, Layerwise, NLLTerms, build_flow
from .invertible_linear import InvertibleLinear
from .permutation import Permutation
from .training import FitHistory, fit

__version__ = "0.2.0"

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "ConditionerMLP",
    "FitHistory",
    "Flow",
    "FlowLayer",
    "HubUnreachableError",
    "InvertibleLinear",
    "Layerwise",
    "MIXINGS",
    "NLLTerms",
    "Permutation",
    "alternating_mask",
    "build_flow",
    "fit",
    "load_flow",
    "save_flow",
]
