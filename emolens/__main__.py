"""``python -m emolens ...`` (what ``torchrun -m emolens ...`` runs): the ``emolens`` CLI."""
import sys

from emolens.cli import main

if __name__ == "__main__":
    sys.exit(main())
