"""The stepline benchmark: standard workloads, timed in fresh engines (`python -m bench`)."""
