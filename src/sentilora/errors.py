"""Project exceptions. The CLI turns any `SentiloraError` into one line on stderr and exit code 2."""


class SentiloraError(Exception):
    """Base class: the message is a complete, one-line explanation with the fix."""


class ConfigError(SentiloraError, ValueError):
    """A config key or value is wrong; the message names the flag and the fix."""


class DataError(SentiloraError, ValueError):
    """Input data is unusable; the message names the file, row and column, and the fix."""


class ModelLoadError(SentiloraError, OSError):
    """A base model or tokenizer could not be loaded (offline, bad path, unsupported)."""


class BundleError(SentiloraError, ValueError):
    """A run bundle is missing files or does not match its base model."""


class OutputError(SentiloraError, ValueError):
    """An output path is taken (a non-empty folder, a file where a folder belongs) or damaged."""
