"""User-facing error types.

Every error a user can trigger with bad input (a wrong shape, NaNs, a missing or corrupt
file, a bad parameter) is raised as one of these, with a message that names the file or
parameter and says what is wrong and what to do. Front ends (CLI, widgets) show the
message as is, without a traceback.
"""

from __future__ import annotations


class SimUqError(Exception):
    """Base class for errors whose message is meant for the user."""


class InputError(SimUqError, ValueError):
    """Bad input data or a bad parameter value."""


class FileFormatError(InputError):
    """A file that exists but cannot be read as what it claims to be."""
