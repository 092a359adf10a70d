"""The one exception type for errors a user can cause."""


class MbxError(Exception):
    """A one-line, user-facing error: what was wrong and what to do about it.

    Raised by validators, API commands and the topology loader; mbxctl prints
    it as ``mbxctl: <message>`` and exits with status 1.
    """
