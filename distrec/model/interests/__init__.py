"""IBIM, the multi-interest sequential recommender of EIMF, and its ESIM heads and losses
(methods.md §2; the table of choices is in :mod:`distrec.interests`). Trained by the one
training loop (``model.kind: eimf``); saved and loaded by :mod:`.artefact`."""
