"""The errors a user can fix: bad flags, config values, missing or invalid input files, refused
checkpoints. run.py prints their one-line message on stderr and exits 2 (tracebacks are for bugs).

Each message names what is wrong (the file, line, key or config field) and, where there is one,
the fix. Subclasses of ValueError where callers already expect one.
"""


class UserError(Exception):
  """Something the user gave is wrong; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
  """A config field (or flag) with a value the run cannot use; the message names the field."""


class InputError(UserError, ValueError):
  """An input file (audio, VA list, TextGrid, corpus folder) that is refused; the message starts
  with its path."""


class NotFoundError(UserError, FileNotFoundError):
  """A file, folder or checkpoint that is not there; the message says how to make it."""
