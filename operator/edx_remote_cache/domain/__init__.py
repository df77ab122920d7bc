"""Pure domain: the CR spec, conditions, user-data, the YAML rewrite engine, and the cloud and host planning.

Nothing here does I/O (no boto3, sockets, subprocesses, kopf or kubernetes): plans are frozen data compared
with `==`, so every decision the operator takes can be tested without a sandbox. Enforced by import-linter."""
