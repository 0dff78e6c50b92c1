"""Discrete-event simulator of the gateway in front of vLLM-like engines."""
