"""Every exception the project defines derives from `MorpheusError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import morpheus_tts.api
import morpheus_tts.host
import morpheus_tts.observability
import morpheus_tts.plugins
import pytest
from morpheus_tts.host import ConfigError, MorpheusError


def project_modules() -> list[str]:
    names = []
    for package in (morpheus_tts.host, morpheus_tts.api, morpheus_tts.observability,
                    morpheus_tts.plugins):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return names


def test_every_project_exception_derives_from_morpheus_error() -> None:
    defined = []
    for name in project_modules():
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # an optional extra (orpheus, mlx) that is not installed
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseException):
                defined.append(cls)
    assert len(defined) >= 7
    assert [cls.__qualname__ for cls in defined if not issubclass(cls, MorpheusError)] == []


def test_errors_keep_their_builtin_bases() -> None:
    from morpheus_tts.host.registry import UnknownComponentError

    with pytest.raises(ValueError):
        raise ConfigError("bad")
    with pytest.raises(LookupError):
        raise UnknownComponentError("engine", "x", [])
