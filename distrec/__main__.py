"""``python -m distrec ...`` is the same as the ``distrec`` console script."""

from distrec.cli import app

app(prog_name="distrec")
