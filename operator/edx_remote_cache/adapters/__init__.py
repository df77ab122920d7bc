"""Adapters: the thin I/O layer that carries plans out and reads the world (boto3, SSM Run Command, memcached
probes, Kubernetes status, Prometheus metrics). They import the domain, never the reconciler or kopf handlers."""
