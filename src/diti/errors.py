"""Failures that end a job with a message that fully explains them (the CLI prints one line, exit 2)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (e.g. no space left); nothing half-written is left behind."""
