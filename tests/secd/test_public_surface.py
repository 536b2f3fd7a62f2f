"""The researcher package's public surface: what `import secd` gives, documented."""

from __future__ import annotations

import inspect
import sys

import secd


def test_public_names() -> None:
    assert secd.__all__ == ["cache", "output_path"]
    namespace: dict = {}
    exec("from secd import *", namespace)  # noqa: S102 - a fixed statement
    assert sorted(name for name in namespace if not name.startswith("__")) == [
        "cache",
        "output_path",
    ]
    # The decorator, not the module of the same name, is what `secd.cache` means.
    assert secd.cache is sys.modules["secd.cache"].cache


def test_public_callables_are_documented() -> None:
    for name in secd.__all__:
        assert inspect.getdoc(getattr(secd, name)), f"secd.{name} has no docstring"
    module = sys.modules["secd.cache"]
    for name in module.__all__:
        assert inspect.getdoc(getattr(module, name)), f"secd.cache.{name} has no docstring"


def test_cache_works_bare_and_with_options(tmp_path) -> None:
    def double(x):
        """Twice x."""
        return 2 * x

    bare = secd.cache(double)
    configured = secd.cache(directory=tmp_path)(double)
    assert bare.__doc__ == "Twice x." and bare.__name__ == "double"
    assert configured(4) == 8
    assert len(list(tmp_path.rglob("*.entry"))) == 1
