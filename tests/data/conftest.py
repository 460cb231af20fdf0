"""Fixtures of the data tests: small files in the official layouts, in a temporary directory."""

from __future__ import annotations

import pytest
from official_layouts import make_cifar_dir, make_idx_dir


@pytest.fixture
def idx_dir(tmp_path):
    """``(root, (train_images, train_labels, test_images, test_labels))`` of four IDX files."""
    root = tmp_path / "mnist"
    return root, make_idx_dir(root)


@pytest.fixture
def cifar_parent(tmp_path):
    """``(parent, (train_data, train_labels, test_data, test_labels))``.

    The batches are in ``parent/cifar-10-batches-py``.
    """
    return tmp_path, make_cifar_dir(tmp_path)
