"""The package's user-facing error: a bad field value or an impossible combination.

It lives below everything (config, the budget solver, data, ...) so any module can raise it without importing
the module that defines Config; ``tinylm.config.ConfigError`` is the same class.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad field value or an impossible combination; the message names the field and what is allowed."""
