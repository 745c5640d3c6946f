"""Exceptions raised by captum-gradeclip."""


class UnsupportedModelError(TypeError):
    """A model, tower or module that captum-gradeclip cannot explain.

    The message names the class that was given and what is supported instead.
    """


class LayerNotExecutedError(RuntimeError):
    """An explained layer did not run during the scorer's forward pass."""


class InputError(Exception):
    """Input that cannot be used as given: a missing file, an unknown model name, a download that failed.

    The message says what was wrong and what to give instead; the ``gradeclip`` command prints it as one line
    and exits with status 2.
    """
