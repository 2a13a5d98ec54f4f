"""Multi-worker training: the launcher (N local processes with TF_CONFIG on loopback) and the worker."""
