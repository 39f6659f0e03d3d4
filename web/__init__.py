"""The browser UI's static files, served at `/` (read through importlib.resources)."""
