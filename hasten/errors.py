"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class HastenError(Exception):
    """A user-facing error: bad input, a missing file, an invalid config value.

    The message names what was wrong (file, field, value) and what was expected; the CLI prints
    it on one line without a traceback unless ``--debug`` is given.
    """
