"""Sources: where flows get their data (iterables, arrays, other flows; files and sockets)."""
