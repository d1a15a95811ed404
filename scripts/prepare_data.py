#!/usr/bin/env python
"""Download datasets for dck_lightning: the installed ``dck-prepare-data`` command, from a checkout.

    python scripts/prepare_data.py --dataset mnist --data-dir data   # = dck-prepare-data ...

See :mod:`dck_lightning.data.prepare`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package

from dck_lightning.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
