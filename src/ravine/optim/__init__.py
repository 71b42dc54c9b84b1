"""The lecture's optimizers as ``torch.optim.Optimizer`` subclasses (Algorithms 8.1-8.7).

========================  ======================  =========================================
class                     registry name           update
========================  ======================  =========================================
:class:`SGD`              ``sgd``                 8.1  ``θ ← θ - εg``
:class:`Momentum`         ``momentum``            8.2  ``v ← αv - εg; θ ← θ + v``
:class:`Nesterov`         ``nesterov``            8.3  gradient at ``θ + αv``
:class:`AdaGrad`          ``adagrad``             8.4  ``r ← r + g²; θ ← θ - εg/(δ + √r)``
:class:`RMSProp`          ``rmsprop``             8.5  ``r ← ρr + (1-ρ)g²; θ ← θ - εg/√(δ + r)``
:class:`RMSPropNesterov`  ``rmsprop-nesterov``    8.6  RMSProp + Nesterov momentum
:class:`Adam`             ``adam``                8.7  bias-corrected moments
:class:`AdamW`            ``adamw``               Adam + decoupled weight decay
========================  ======================  =========================================
"""

from ravine.optim.adaptive import AdaGrad, Adam, AdamW, RMSProp, RMSPropNesterov
from ravine.optim.base import RavineOptimizer, clip_grad_norm_, true_params
from ravine.optim.registry import create, hyperparameters, names
from ravine.optim.sgd import SGD, Momentum, Nesterov

__all__ = [
    "SGD",
    "Momentum",
    "Nesterov",
    "AdaGrad",
    "RMSProp",
    "RMSPropNesterov",
    "Adam",
    "AdamW",
    "RavineOptimizer",
    "clip_grad_norm_",
    "true_params",
    "create",
    "names",
    "hyperparameters",
]
