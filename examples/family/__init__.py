"""A parent worker that owns child workers: starts them, gives them work, ends them."""
