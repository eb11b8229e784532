"""The typed run context: each method is generic in the options it declares, one distill call looks its method up
once, and the step loop names what a method's steps are."""

import typing

import pytest

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
