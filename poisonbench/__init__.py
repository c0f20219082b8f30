"""poisonbench: benchmark data-poisoning attacks against training-time defenses.

Reproduces "Healthy Influential-Noise based Training to Defend against Data Poisoning Attacks" (HINT).
"""

# The one place the version is written: pyproject.toml reads it from here ([tool.setuptools.dynamic]), so the
# installed metadata, `poisonbench --version` and every record's `env.poisonbench` agree.
__version__ = "0.1.0"
