"""bnbook: the code of the book "Batch normalization from first principles".

Modules:

* :mod:`bnbook.batchnorm` -- forward/backward, the BatchNorm1d layer, ghost batch norm, folding
* :mod:`bnbook.layers` -- Linear, ReLU, Sigmoid, loss, Sequential, SGD
* :mod:`bnbook.gradcheck` -- numerical gradients and relative errors
* :mod:`bnbook.mnist` -- the MNIST loader (download, checksum, cache)
* :mod:`bnbook.train` -- the training loop and its History
* :mod:`bnbook.plots` -- figures shared by the chapters
* :mod:`bnbook.protocol` -- the Layer base class (the protocol), shared checks, NonFiniteError
* :mod:`bnbook.layernorm` -- layer normalization (chapter 7)
* :mod:`bnbook.input_normalization` -- chapter 1's models, preprocessing and drift recorder
* :mod:`bnbook.inference_stats` -- running averages, population statistics, precise BN (chapters 5, 7)
* :mod:`bnbook.sync_batchnorm` -- batch norm synchronized across workers, Chan's formula (chapter 7)
* :mod:`bnbook.experiments` -- chapter 6's recipes and experiment drivers
* :mod:`bnbook.timing` -- median timings with timeit (chapter 3)
* :mod:`bnbook.conv` -- convolution, pooling, Flatten, the CNN of chapter 9
* :mod:`bnbook.normalization` -- BatchNorm2d, GroupNorm, LayerNorm2d, InstanceNorm2d, folding
"""
from .batchnorm import (BatchNorm1d, batchnorm_backward, batchnorm_backward_staged,
                        batchnorm_eval, batchnorm_forward, fold_batchnorm)
from .gradcheck import numerical_gradient, relative_error
from .layers import (SGD, Linear, ReLU, Sequential, Sigmoid, SoftmaxCrossEntropy,
                     build_mlp, softmax_cross_entropy)
from .train import History, eval_outputs, evaluate, fit, predict
from .protocol import Layer, NonFiniteError
from .conv import Conv2d, Flatten, MaxPool2d, build_cnn  # chapter 9
from .normalization import BatchNorm2d, GroupNorm, InstanceNorm2d, LayerNorm2d

__version__ = "0.1.0"
