"""Errors raised for bad user input: one clear line naming the file/key and the problem."""


class SEPluginsError(Exception):
    """Base class of the errors this package raises for bad input."""


class DataError(SEPluginsError, ValueError):
    """A dataset file is missing, corrupt or inconsistent (the message names the file)."""


class ConfigError(SEPluginsError, ValueError):
    """A config key is unknown, has the wrong type or an invalid value (the message names the key)."""


class CheckpointError(SEPluginsError, ValueError):
    """A checkpoint is missing, corrupt or does not fit the model."""
