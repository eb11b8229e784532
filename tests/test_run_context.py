"""The typed run context: each method is generic in the options it declares, one distill call looks its method up
once, and the step loop names what a method's steps are."""

import typing

import pytest
import torch

from datadistill import api
from datadistill.methods import METHODS, Method, RunContext
from datadistill.methods.guided_sampling import GuidedSampling
from datadistill.methods.sfm import SFMOptions


def _declared_options(cls: type) -> type | None:
    """The options type a method class gives its generic base (``class SFM(Method[SFMOptions])``)."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) in (Method, GuidedSampling):
                return typing.get_args(base)[0]
    return None


@pytest.mark.parametrize("name", METHODS.names())
def test_each_method_is_generic_in_the_options_it_declares(name):
    cls = METHODS.get(name)
    assert _declared_options(cls) is cls.Options


def test_the_context_is_typed_by_the_options():
    (options_type,) = RunContext.__parameters__
    assert typing.get_type_hints(RunContext)["opts"] is options_type  # not Any
    assert typing.get_args(RunContext[SFMOptions]) == (SFMOptions,)


def test_one_distill_call_looks_its_method_up_once(monkeypatch, digits):
    looked_up = []
    real = api.get_method

    def counting(name):
        looked_up.append(name)
        return real(name)

    monkeypatch.setattr(api, "get_method", counting)
    synset = api.distill("random", "digits", 1, dataset=digits)
    assert looked_up == ["random"] and len(synset) == digits.num_classes


def test_sampling_methods_have_no_optimizer_and_say_chunks_and_ot_distance():
    for name in ("dmgd", "mgd3"):
        method = METHODS.get(name)()
        assert method.stepwise and method.make_optimizer(None, None) is None
        assert (method.step_unit, method.progress_name) == ("chunk", "OT distance")
    sfm = METHODS.get("sfm")()
    assert (sfm.step_unit, sfm.progress_name) == ("step", "loss")


@pytest.mark.parametrize("name", ["sfm", "lgm"])
def test_view_chunks_give_the_loss_and_image_gradient_of_one_batch(name, digits, lite0):
    """Activation checkpointing in chunks of views (the last one short) changes memory, not the step."""
    results = {}
    for chunk in (0, 7):
        config = api.make_config(name, "digits", 1, crop=32, augs=2, init="real", view_chunk=chunk)
        ctx = api.build_context(config, digits, lite0)
        param = ctx.method.init_param(ctx)
        ctx.generator.manual_seed(11)
        loss = ctx.method.loss(ctx, param.render())
        (grad,) = torch.autograd.grad(loss, list(param.parameters())[:1])
        results[chunk] = (loss.detach(), grad)
    (loss_one, grad_one), (loss_chunked, grad_chunked) = results[0], results[7]
    torch.testing.assert_close(loss_chunked, loss_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_chunked, grad_one, rtol=1e-4, atol=1e-7)
    assert grad_one.abs().sum() > 0


def test_view_chunk_is_no_part_of_a_runs_identity(tmp_path):
    from datadistill.core.errors import ConfigError
    from datadistill.run.directory import RunDir

    run = RunDir(tmp_path / "run")
    run.claim(api.make_config("sfm", "digits", 1, crop=32, steps=2, view_chunk=0), {})
    (run.path / "checkpoints").mkdir(exist_ok=True)
    (run.path / "checkpoints" / "last.pt").write_bytes(b"progress")
    assert run.has_progress()
    assert run.claim(api.make_config("sfm", "digits", 1, crop=32, steps=2, view_chunk=8), {})  # resumes
    with pytest.raises(ConfigError, match="different config"):
        run.claim(api.make_config("sfm", "digits", 1, crop=32, steps=3), {})
