"""The one error type of checkpoint I/O."""


class CheckpointError(ValueError):
  """A checkpoint that is missing, malformed, or does not fit the model it is loaded into.

  The message names the file and, where one is at fault, the tensor or leaf.
  """
