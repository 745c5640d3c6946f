"""``python -m captum_gradeclip.finetune`` (or ``torchrun ... -m captum_gradeclip.finetune``): see :mod:`.train`."""

import sys

from .train import main

if __name__ == "__main__":
    sys.exit(main())
