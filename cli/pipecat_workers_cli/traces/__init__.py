"""Reading the span files workers write (``.workers/<project>/traces/``)."""
