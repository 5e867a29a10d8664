"""The native core's identity check: a missing or mismatched core is one
specific exception (IncorrectPluginhostFile in the framework)."""

from __future__ import annotations

import pytest

from vmsnap_native import _core
from vmsnap_native.errors import CoreUnavailable


def test_core_loads_and_matches():
    ffi, lib = _core.core()
    assert lib.vmsnap_core_abi() == _core.EXPECTED_ABI


def test_abi_mismatch_is_core_unavailable(monkeypatch):
    monkeypatch.setattr(_core, "EXPECTED_ABI", _core.EXPECTED_ABI + 1)
    with pytest.raises(CoreUnavailable, match="mismatch"):
        _core._load()


def test_version_mismatch_is_core_unavailable(monkeypatch):
    monkeypatch.setattr(_core, "__version__", "0.0.0-other")
    with pytest.raises(CoreUnavailable, match="mismatch"):
        _core._load()


def test_missing_core_is_core_unavailable(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "vmsnap_native._vmsnap_core", None)  # import fails
    with pytest.raises(CoreUnavailable, match="cannot be loaded"):
        _core._load()
