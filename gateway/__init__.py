"""The gateway: command line and media I/O now; live sources, sinks and the HTTP API to come."""
