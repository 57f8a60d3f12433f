"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, folder, config, checkpoint) that the user can fix.

    The message is a single line that names the offending file or value and what was expected.
    `nightseg` prints it as ``error: <message>`` and exits with code 2; ``--debug`` adds the traceback.
    """

    exit_code = 2


class TrainingInterrupted(Exception):
    """A training run stopped before its last step (SIGTERM / Ctrl-C); its state is saved and rerunning the
    same command continues it. The CLI prints the message and exits with code 130, as for Ctrl-C."""

    exit_code = 130
