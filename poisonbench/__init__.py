"""poisonbench: benchmark data-poisoning attacks against training-time defenses.

Reproduces "Healthy Influential-Noise based Training to Defend against Data Poisoning Attacks" (HINT).
"""

__version__ = "0.1.0"
