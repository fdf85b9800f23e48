"""The ``workers`` command: run and inspect topologies of pipecat-workers."""
