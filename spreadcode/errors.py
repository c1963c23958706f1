"""The one exception type that user-caused problems raise (bad files, bad arguments).

The CLI turns it into a single line on stderr and a non-zero exit; library users can catch
it as a plain ``ValueError``.
"""


class SpreadcodeError(ValueError):
    """A problem with the user's input: the message says what and where."""
