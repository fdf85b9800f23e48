"""A greeter hands a customer over to support: scripted agents, no LLM."""
