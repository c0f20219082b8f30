"""The noise-direction control for HINT (experiments/table3_powered.md, issue 80), a poisonbench plugin."""
