"""``python -m dck_lightning …`` is ``dck …`` (:func:`dck_lightning.cli.entry_point`)."""

from .cli import entry_point

if __name__ == "__main__":
    entry_point()
