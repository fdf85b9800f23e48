"""Workers and the runner that hosts them."""
