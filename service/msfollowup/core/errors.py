"""The base of the project's own exceptions.

Every message names the object (a UID, a file, a config key) and the problem, never patient data:
messages end up in logs, CLI output and DIMSE Error Comments.
"""


class MsFollowupError(Exception):
    """Base class: a problem the caller can explain to a user (not a bug)."""
