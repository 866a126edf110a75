"""The one exception type users see.

Everything that is the user's fault (a bad file, a bad config key, a missing
run directory) raises :class:`LenetlabError` with a one-line message naming
the problem. The CLI prints that line and exits non-zero, never a traceback.
"""


class LenetlabError(Exception):
    """A problem with the user's input, reported as one clear line."""
