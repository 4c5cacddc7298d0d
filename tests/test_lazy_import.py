"""`import gpudl` reaches its optional submodules lazily: attribute access
imports them, a bare `import gpudl` does not."""
import subprocess
import sys

LAZY = ("datasets", "gradcheck", "demos", "averaging", "augment", "metrics")


def _python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout.split()


def test_import_gpudl_does_not_import_them():
    names = ", ".join(repr(f"gpudl.{m}") for m in LAZY)
    loaded = _python(f"import sys, gpudl\nfor m in ({names},):\n"
                     f"    print(m in sys.modules)")
    assert loaded == ["False"] * len(LAZY)


def test_attribute_access_imports_them():
    out = _python("import gpudl\nprint(gpudl.datasets.load_mnist.__name__, "
                  "gpudl.gradcheck.check_layer.__name__, gpudl.augment.Augment.__name__, "
                  "gpudl.metrics.confusion_matrix.__name__, gpudl.averaging.__name__, "
                  "gpudl.demos.__name__, 'datasets' in dir(gpudl))")
    assert out == ["load_mnist", "check_layer", "Augment", "confusion_matrix",
                   "gpudl.averaging", "gpudl.demos", "True"]


def test_unknown_attributes_still_raise():
    import pytest

    import gpudl
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gpudl.nope
