"""Seed 002's voice app as workers, runnable anywhere: a text transport stands in for the
user's audio connection, offline services for speech-to-text and text-to-speech, and a
scripted model for the LLM unless ``OPENAI_API_KEY`` is set.

``workers up configs/voice.yaml`` runs a transport worker and two agents (a greeter and
support), each in a process of its own; ``python -m examples.voice`` runs them in one.
"""
