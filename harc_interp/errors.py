"""One exception type for everything a user can fix; messages say what to fix."""


class HarcError(Exception):
    """Bad input, missing model files, mismatched artifacts: the message names the problem and the fix."""
