"""A coordinator fans a research question out to several researchers as one job group."""
