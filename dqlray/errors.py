"""User-facing errors.

Anything a user can cause with a file, a flag or a config value raises a subclass of :class:`DqlrayError`
(itself a ``ValueError``) whose message names the file, field or value and what is allowed. The command-line entry
points print such errors as one line and exit non-zero, without a traceback.
"""

from __future__ import annotations


class DqlrayError(ValueError):
    """A problem with the user's input, reported as one line at the command line."""

    exit_code = 2  # EX_USAGE-like: the command line exits with this code


class DataError(DqlrayError):
    """A price file that cannot be used as it is (missing columns, bad values, bad timestamps, too short)."""


class ConfigError(DqlrayError):
    """A configuration value, key or file that is not allowed."""


class WriteFailed(DqlrayError):
    """A result could not be written (disk full, quota, read-only, no permission): the message names the folder and
    the space needed; the temporary files of the write are removed and what was saved before is left intact."""

    exit_code = 74  # EX_IOERR (sysexits.h)


class FolderInUse(DqlrayError):
    """Another run holds the experiment folder's lock."""
