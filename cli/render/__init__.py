"""How a running project is shown: plain prefixed lines, or the live view."""


def plural(n: int, noun: str) -> str:
    """``plural(1, "runner")`` is "1 runner", ``plural(2, "runner")`` "2 runners"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
