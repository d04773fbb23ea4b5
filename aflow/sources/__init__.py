"""Sources: where flows get their data. Iterables and arrays, other flows (merge, concat,
zip, repeat, asof_join), files (read_*: many at once, globs, follow) and sockets (TCP, Unix
and UDP servers, a reconnecting TCP client)."""
