"""How a running project is shown: plain prefixed lines, or the live view."""
