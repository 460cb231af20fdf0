"""shrinkssm: deep State Space Models that start large and shrink while they train.

Sub-packages, one job each:

* :mod:`shrinkssm.lti`      control-theory core (Gramians, Hankel singular values, reductions)
* :mod:`shrinkssm.ops`      the linear recurrence (scan) and its fast kernels
* :mod:`shrinkssm.nn`       layers (the LRU) and the deep sequence model
* :mod:`shrinkssm.compress` the in-training compression schedule and optimizer-state surgery
* :mod:`shrinkssm.data`     data sets (know nothing of models)
* :mod:`shrinkssm.train`    configs, the training loop, checkpoints, logs and plots
"""

__version__ = "0.1.0"
