"""From records to the paper's tables and figures: aggregation, the published numbers, tables, figures."""
