"""verl glue. Importing this package registers the ``igpo`` advantage estimator with verl."""

from igpo.verl.estimator import compute_igpo_advantage_verl, igpo_settings

__all__ = ["compute_igpo_advantage_verl", "igpo_settings"]
