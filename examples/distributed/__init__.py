"""The hand-off example split over processes (or machines) on Redis or PGMQ."""
