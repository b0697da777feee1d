"""The functional core: plain data in, plain data out; no UI, no bus client."""
