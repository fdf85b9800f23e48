"""Network backends; each module needs its driver (an optional extra)."""
