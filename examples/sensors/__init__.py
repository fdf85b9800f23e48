"""A sensor that publishes readings and a controller that reacts to them with jobs."""
