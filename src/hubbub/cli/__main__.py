"""``python -m hubbub.cli``: the ``hubbub`` command (tests and ``accelerate launch -m`` use it)."""
import sys

from hubbub.cli import main

if __name__ == "__main__":  # importing the module (the dependency test does) runs nothing
    sys.exit(main())
