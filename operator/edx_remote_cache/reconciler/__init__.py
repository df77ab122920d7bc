"""The reconciler: observe -> plan -> act -> status for one EdxRemoteCache, built from named steps over the
adapters it is given (never constructed here), so it runs on fakes in tests/reconciler."""
