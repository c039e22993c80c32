"""bnbook: the code of the book "Batch normalization from first principles".

Core modules, each importing only those above it in this list:

* :mod:`bnbook.checks` -- input checks and :class:`NonFiniteError`
* :mod:`bnbook.layers` -- the layer contract (:class:`Layer`), Linear,
  activations, Dropout, Sequential
* :mod:`bnbook.batchnorm` -- batch norm derived node by node (chapters 2-4)
* :mod:`bnbook.normalization` -- the normalization kernel and every
  normalization layer; folding and population statistics
* :mod:`bnbook.convolution` -- convolution, pooling, Flatten (chapter 9)
* :mod:`bnbook.models` -- the networks the chapters train (build_mlp, build_cnn)
* :mod:`bnbook.losses` -- softmax cross-entropy
* :mod:`bnbook.optimizers` -- SGD with momentum and weight decay
* :mod:`bnbook.training` -- the training loop, its callbacks, evaluation
* :mod:`bnbook.sync_batchnorm` -- batch norm synchronized across simulated workers (chapter 7)
* :mod:`bnbook.mnist` -- the MNIST loader (download, checksum, cache)
* :mod:`bnbook.gradcheck` -- numerical gradients and relative errors (chapters 3, 4, 7, 9)
* :mod:`bnbook.timing` -- median timings (chapter 3)
* :mod:`bnbook.plots` -- figures shared by the chapters

Chapter drivers, which the core never imports: :mod:`bnbook.chapters`
(``ch1_inputs``, ``ch5_statistics``, ``ch6_mnist``, ``ch8_explanations``).
"""
from .batchnorm import batchnorm_backward, batchnorm_backward_staged, batchnorm_forward
from .checks import NonFiniteError
from .convolution import Conv2d, Flatten, MaxPool2d
from .gradcheck import numerical_gradient, relative_error
from .layers import Dropout, Layer, Linear, ReLU, Sequential, Sigmoid, Tanh
from .losses import softmax_cross_entropy
from .models import build_cnn, build_mlp
from .normalization import (BatchNorm1d, BatchNorm2d, FrozenBatchNorm1d, GroupNorm, InstanceNorm2d,
                            LayerNorm, LayerNorm2d, fold_batchnorm, normalize,
                            normalize_backward, recompute_bn_statistics)
from .optimizers import SGD
from .training import History, eval_outputs, evaluate, fit, predict

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Flatten",
    "FrozenBatchNorm1d", "GroupNorm", "History", "InstanceNorm2d", "Layer", "LayerNorm",
    "LayerNorm2d", "Linear", "MaxPool2d", "NonFiniteError", "ReLU", "SGD", "Sequential",
    "Sigmoid", "Tanh", "batchnorm_backward", "batchnorm_backward_staged",
    "batchnorm_forward", "build_cnn", "build_mlp", "eval_outputs", "evaluate", "fit",
    "fold_batchnorm", "normalize", "normalize_backward", "numerical_gradient", "predict",
    "recompute_bn_statistics", "relative_error", "softmax_cross_entropy",
]

__version__ = "0.2.0"
