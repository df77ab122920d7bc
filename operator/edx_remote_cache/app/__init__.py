"""The kopf application: one-line handlers, the wiring that builds adapters from settings, and the daemons."""
