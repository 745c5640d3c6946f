"""captum-gradeclip: Grad-ECLIP explanations for CLIP-style models as Captum attributions."""

__version__ = "0.1.0"
