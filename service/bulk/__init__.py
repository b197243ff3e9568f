"""Bulk embedding of a collection through running servers (`clip-serve embed`): sources, resumable sinks, the loop.

A client-side tool: it talks to servers only through service/client.py and imports no server code."""
