"""An example poisonbench plugin (docs/extending.md, "A plugin package"): one defense, `median-filter`."""
