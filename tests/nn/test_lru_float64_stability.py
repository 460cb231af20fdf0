"""LRU.system() decides stability in float64 from the stored parameters (issue 15): with
nu_log < -16, exp(-exp(nu_log)) rounds to 1 in float32 although the layer is strictly stable."""

import math

import pytest
import torch

from shrinkssm import lti
from shrinkssm.compress import Compressor, ReductionSchedule
from shrinkssm.nn import LRU


def _layer(nu_log0: float, theta_log0: float | None = None) -> LRU:
    torch.manual_seed(0)
    layer = LRU(4, 16)
    with torch.no_grad():
        layer.nu_log[0] = nu_log0
        if theta_log0 is not None:
            layer.theta_log[0] = theta_log0
    return layer


def test_the_system_is_built_in_float64_from_the_stored_parameters():
    layer = _layer(-20.0)
    assert float(layer.eigenvalues()[0].detach().abs()) == 1.0                 # float32 forward: on the circle
    sys = layer.system()
    assert sys.lam.dtype == torch.complex128
    # |lam_0| = exp(-exp(-20)) = 1 - 2.06e-9 in exact arithmetic
    expected = math.exp(-math.exp(-20.0))
    assert float(sys.lam[0].abs()) == pytest.approx(expected, rel=0, abs=1e-15)
    assert float(sys.lam[0].abs()) < 1.0
    # the other entries are the float32 parameters evaluated in float64
    nu, theta = layer.nu_log.double(), layer.theta_log.double()
    torch.testing.assert_close(sys.lam, torch.exp(torch.complex(-nu.exp(), theta.exp())),
                               rtol=0, atol=0)
    gamma_b = torch.complex(layer.B_re.double(), layer.B_im.double()) * layer.gamma_log.double().exp()[:, None]
    torch.testing.assert_close(sys.B, gamma_b, rtol=0, atol=0)


def test_hsvs_and_a_reduction_of_a_layer_at_the_float32_unit_circle():
    layer = _layer(-20.0)
    before = layer.system()
    hsv = lti.hsvd(before)
    assert bool(torch.isfinite(hsv).all()) and hsv[0] > 1e6          # the slow state dominates
    report = layer.reduce_(8)
    assert report.new_d_state == layer.d_state == 8
    assert any("|lam| >= 1 in the torch.float32 forward" in n for n in report.notes)
    after = layer.system()
    # the slow pole is clamped (with a note) so that the float32 forward is strictly stable
    assert any("moved radially" in n for n in report.notes)
    assert bool((layer.eigenvalues().detach().abs() < 1).all())
    # away from that pole the reduced map is within the a-priori bound of the original one:
    # the gain of the difference is at most twice the discarded HSVs on a fine frequency grid
    assert report.error_bound is not None and math.isfinite(report.error_bound)
    omega = torch.linspace(-math.pi, math.pi, 4001, dtype=torch.float64)
    pole = before.lam[0].angle()
    omega = omega[torch.remainder(omega - pole + math.pi, 2 * math.pi).sub(math.pi).abs() > 1e-2]
    diff = lti.frequency_response(before, omega, "complex") - \
        lti.frequency_response(after, omega, "complex")
    gain = torch.linalg.matrix_norm(diff, ord=2).max()
    assert 0 < float(gain) <= report.error_bound * (1 + 1e-6)


def test_a_layer_on_the_circle_even_in_float64_is_kept_by_the_compressor_with_a_note():
    layer = _layer(-60.0, -60.0)        # exp(-60) < float64 eps, phase ~ 0: lam == 1.0 exactly
    assert float(layer.system().lam[0].abs()) == 1.0
    with pytest.raises(ValueError, match="stable"):
        lti.hsvd(layer.system())
    model = torch.nn.Sequential(layer)
    compressor = Compressor(ReductionSchedule.at([1]), mode="tolerance", tol=0.05)
    event = compressor.step(1, model)
    assert event is not None and layer.d_state == 16
    le = event.layers[0]
    assert le.new == le.old == 16 and le.hsv == []
    assert le.skipped.startswith("not measured, layer kept as it was") and "stable" in le.skipped
