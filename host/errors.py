"""The root of every exception Morpheus raises on purpose.

`except MorpheusError` catches what the host, the API and the built-in plugins raise to say a
request, a setting or a plugin is wrong, and nothing else. Each subclass also derives from the
builtin that fits it (`ConfigError` is a `ValueError`, `UnknownComponentError` a `LookupError`),
so code that already catches the builtin keeps working.
"""

from __future__ import annotations


class MorpheusError(Exception):
    """Base class of the project's exceptions."""
