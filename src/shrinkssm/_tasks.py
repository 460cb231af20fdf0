"""The kinds of task: what a data set poses (``shrinkssm.data``) and a model's head answers
(``shrinkssm.nn``), listed once. Imports nothing from the package, so that ``nn`` need not import
the data layer for it.

* ``"classification"`` -- one label per sequence (or per position for per-step tasks);
* ``"regression"``     -- real-valued targets;
* ``"lm"``             -- next-token prediction over a vocabulary.
"""

TASK_KINDS = ("classification", "regression", "lm")
