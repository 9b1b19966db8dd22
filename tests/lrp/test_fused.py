"""The fused element-wise steps (spray.lrp.fused): the compiled kernels compute what the eager functions
do, and a platform where compiling fails falls back to the eager functions with a warning."""

import logging

import nets
import pytest
import torch

from spray.lrp import LRP, fused


def _inputs():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, 5, 5, generator=generator)
    z[0, 0, 0, :3] = 0.0  # outputs with z = 0 pass nothing under gamma
    q = torch.rand(2, 6, 5, 5, generator=generator) + z.clamp(min=0)
    relevance = torch.randn(2, 6, 5, 5, generator=generator)
    return z, q, relevance


def _all(fn_gamma, fn_ab, fn_eps):
    z, q, relevance = _inputs()
    return [fn_gamma(z, 0.25 * q + 1e-6, relevance, 0.25, 1), fn_ab(z, q + 1e-6, relevance, 1e-6, 1),
            fn_eps(relevance, z, 1e-6)]


@pytest.fixture
def compiling():
    fused.enable_compile(True)
    yield
    fused.enable_compile(False)


@pytest.mark.e2e
def test_compiled_kernels_equal_the_eager_functions(compiling):
    eager = _all(fused.gamma_quotients.fn, fused.alpha_beta_quotients.fn, fused.epsilon_quotient.fn)
    compiled = _all(fused.gamma_quotients, fused.alpha_beta_quotients, fused.epsilon_quotient)
    assert not fused.gamma_quotients._failed, "torch.compile failed here: the test measured nothing"
    for expected, got in zip(eager, compiled):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (eager[0][0, [0, 6], 0, :3] == 0).all()  # z = 0: nothing passed (both halves of the stack)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(compiling, monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = fused.Fused(fused.epsilon_quotient.fn)
    z, _, relevance = _inputs()
    with caplog.at_level(logging.WARNING, logger="spray.lrp.fused"):
        out = step(relevance, z, 1e-6)
    torch.testing.assert_close(out, fused.epsilon_quotient.fn(relevance, z, 1e-6))
    assert "no C++ compiler found" in caplog.text and "eager" in caplog.text
    caplog.clear()
    step(relevance, z, 1e-6)  # from then on eager, without trying again
    assert caplog.text == ""


def test_a_switched_off_step_never_compiles():
    fused.enable_compile(False)
    z, _, relevance = _inputs()
    step = fused.Fused(fused.epsilon_quotient.fn)
    step(relevance, z, 1e-6)
    assert step._compiled is None


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_alpha2_beta1"])
@pytest.mark.parametrize("make", [lambda: nets.VGG16(width=0.125, hidden=32), lambda: nets.MobileNetV2(width=0.25)],
                         ids=["vgg", "mobilenet"])
def test_the_fused_steps_compute_what_the_rules_compute_in_place(composite, make, monkeypatch):
    """The eager steps write in place; the functional forms that ``torch.compile`` fuses must give the
    same relevance (run here uncompiled). MobileNetV2's depthwise convolutions take the unstacked branch."""
    model = nets.randomize_batchnorm(nets.init_weights(make())).eval()
    x, targets = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    bounds = {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}
    _, in_place = LRP(model, composite, **bounds)(x, targets)
    for step in (fused.gamma_quotients, fused.alpha_beta_quotients, fused.epsilon_quotient):
        monkeypatch.setattr(step, "eager", step.fn)
    _, functional = LRP(model, composite, **bounds)(x, targets)
    torch.testing.assert_close(functional, in_place, rtol=1e-4, atol=1e-6 * float(in_place.abs().max()))


def test_the_scratch_memory_of_the_stacked_quotients_is_not_held_between_calls():
    """gamma and alpha-beta write their stacked quotients into per-thread scratch memory during the backward
    pass; a call (and a layer's relevance through ``at_layer``) returns it, so an idle engine holds none."""
    model, x = nets.VGG16(width=0.125, hidden=32), torch.randn(2, 3, 32, 32)
    lrp = LRP(nets.init_weights(model).eval(), "epsilon_gamma_box", low=-3.0, high=3.0)
    lrp(x, torch.tensor([0, 1]))
    assert fused._scratch.buffers == {}
    lrp.at_layer(x, "features.2", lambda out: out)
    assert fused._scratch.buffers == {}
