"""Chapter drivers: the experiments of single chapters, built on the core package.

* :mod:`.ch1_inputs` -- chapter 1: least squares on badly scaled features,
  preprocessing, and a deep network's drifting pre-activations;
* :mod:`.ch5_statistics` -- chapter 5: running averages in both momentum
  conventions, and precise batch norm against the running averages;
* :mod:`.ch6_mnist` -- chapter 6: the "10 Days of Grad" recipe and its
  variants, the book's recipe, and Ioffe & Szegedy's MNIST test;
* :mod:`.ch8_explanations` -- chapter 8: one measurement per explanation of
  why batch norm helps, and the noisy batch-norm layer.

Nothing in the core imports these modules.
"""
