"""The one Registry type: registration, lookup with one error format, and plugins from entry points."""

import sys

import pytest

from datadistill.core.errors import ConfigError, DataError, WeightsError
from datadistill.core.registry import Registry


def test_register_get_names_items_contains():
    things: Registry[int] = Registry("thing")
    things.register("b", 2)

    @things.register("a")
    def a():
        return 1

    assert things.get("b") == 2 and things.get("a") is a
    assert things.names() == ["b", "a"] and list(things) == ["b", "a"] and len(things) == 2
    assert things.items() == [("b", 2), ("a", a)]
    assert "a" in things and "c" not in things


def test_unknown_name_error_lists_the_known_ones_sorted_then_the_extra_forms():
    things: Registry[int] = Registry("thing", also=("x:ANY",))
    things.register("b", 2)
    things.register("a", 1)
    with pytest.raises(ConfigError) as info:
        things.get("nope")
    assert str(info.value) == "unknown thing 'nope'. Known: a, b, x:ANY"


@pytest.mark.parametrize(
    ("module", "name", "kind", "error"),
    [
        ("datadistill.methods", "METHODS", "method", ConfigError),
        ("datadistill.evaluate", "PROTOCOLS", "protocol", ConfigError),
        ("datadistill.features.backbones", "BACKBONES", "backbone", WeightsError),
        ("datadistill.data.catalog", "DATASETS", "dataset", DataError),
        ("datadistill.models.architectures", "ARCHITECTURES", "architecture", ConfigError),
        ("datadistill.training", "PRETRAINERS", "pretrainer", ConfigError),
    ],
)
def test_every_registry_says_unknown_kind_the_same_way(module, name, kind, error):
    registry = getattr(__import__(module, fromlist=[name]), name)
    assert registry.group == f"datadistill.{kind}s"
    with pytest.raises(error, match=f"^unknown {kind} 'nope'. Known: "):
        registry.get("nope")


def _install_plugin(tmp_path, monkeypatch, group: str, name: str, target: str, module_text: str) -> None:
    """A fake installed distribution (a dist-info with entry_points.txt) and the module its entry point names."""
    module = target.split(":")[0]
    (tmp_path / f"{module}.py").write_text(module_text)
    info = tmp_path / "fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_a_plugin_entry_point_is_registered_on_the_first_lookup(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "datadistill.gadgets", "fancy", "fake_gadget:FANCY", "FANCY = 42\n")
    gadgets: Registry[int] = Registry("gadget")
    gadgets.register("plain", 1)
    assert "fake_gadget" not in sys.modules  # nothing is loaded before a lookup
    assert gadgets.get("fancy") == 42
    assert gadgets.names() == ["plain", "fancy"]


def test_a_plugin_module_may_register_its_entry_itself(tmp_path, monkeypatch):
    (tmp_path / "fake_host.py").write_text(
        "from datadistill.core.registry import Registry\nHOST = Registry('sprocket')\n"
    )
    text = "import fake_host\nfake_host.HOST.register('s', 'made on import')\n"
    _install_plugin(tmp_path, monkeypatch, "datadistill.sprockets", "s", "fake_sprocket", text)
    monkeypatch.delitem(sys.modules, "fake_host", raising=False)
    import fake_host

    assert fake_host.HOST.get("s") == "made on import"  # what the module registered, not the module object


def test_a_broken_plugin_is_one_clear_error(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "datadistill.doohickeys", "bad", "fake_bad:X", "raise ImportError('no')\n")
    with pytest.raises(ConfigError, match="^the doohickey plugin 'bad' \\(fake_bad:X\\) cannot be loaded: no$"):
        Registry("doohickey").names()
