"""Exceptions raised by captum-gradeclip."""


class UnsupportedModelError(TypeError):
    """A model, tower or module that captum-gradeclip cannot explain.

    The message names the class that was given and what is supported instead.
    """


class LayerNotExecutedError(RuntimeError):
    """An explained layer did not run during the scorer's forward pass."""
