"""User-facing errors: one line that names the file or key and says what to do."""


class PatchlensError(Exception):
    """An error caused by input or configuration, shown to the user without a traceback."""


class ConfigError(PatchlensError):
    """The configuration is invalid (names the key and the fix)."""


class DataError(PatchlensError):
    """A data set file is missing, corrupt or inconsistent (names the file)."""


class WeightsError(PatchlensError):
    """Model weights are missing, unreachable or fail their checksum (names the model)."""
