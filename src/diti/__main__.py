"""``python -m diti`` (and ``accelerate launch -m diti train ...``)."""

from .cli.main import main

main()
