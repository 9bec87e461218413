"""Exceptions raised for bad input. Each message names the file, row or key at fault."""


class DistrecError(Exception):
    """Base class of every error distrec raises on purpose."""


class ConfigError(DistrecError):
    """A config file or override is wrong: unknown key, wrong type, bad value."""


class DataError(DistrecError):
    """A data file is missing, truncated or malformed, or a dataset is empty after filtering."""


class ModelError(DistrecError):
    """A model path, tokenizer or checkpoint cannot be used as configured."""
