"""``distrec predict``: score your own rows with a trained run (Ray Data actors, one model copy each)."""
