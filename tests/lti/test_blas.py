"""Tests of shrinkssm.lti._blas: the control core's BLAS thread limit."""

import pytest
from threadpoolctl import threadpool_info

from shrinkssm import lti
from shrinkssm.lti._blas import limited_blas


@limited_blas
def _blas_threads_inside():
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_public_calls_run_blas_single_threaded_by_default():
    assert lti.blas_threads() == 1
    inside = _blas_threads_inside()
    assert inside <= {1}


def test_the_limit_can_be_lifted_and_restored():
    try:
        lti.set_blas_threads(None)
        outside = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
        assert _blas_threads_inside() == outside
    finally:
        lti.set_blas_threads(1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="BLAS threads"):
        lti.set_blas_threads(bad)
