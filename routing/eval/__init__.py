"""Offline evaluation of routing strategies on outcome data: split, reference rows, metrics,
hyperparameter tuning inside the train split, plots. Driven by ``conclave eval``."""
