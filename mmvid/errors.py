"""The one user-facing error type: the CLI prints its message on one line, without a traceback."""


class MmvidError(Exception):
    """A problem with the user's input (file, option, data); the message says what to do."""


class Interrupted(MmvidError):
    """Training stopped on request (Ctrl-C) after saving a checkpoint it can resume from."""


class PluginError(MmvidError):
    """A plug-in from outside mmvid that a run needs is missing, changed or not given (mmvid.plugins): the
    message names it and what to do; whoever reads the run passes it on as it is."""
