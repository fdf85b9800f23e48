"""The supervisor of ``workers up``: decides, acts, and keeps the state others read."""
