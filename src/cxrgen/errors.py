"""Errors raised on bad user input; each names the offending file/column/key and what was expected."""


class InputError(ValueError):
    """Bad input supplied by the user (path, file, column, value, config key)."""


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are neither in a local folder nor reachable on the hub."""
