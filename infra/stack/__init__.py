"""The embedded stack behind `kiln up`: its services under supervisord, the helpers supervisord starts
(`python -m infra.stack.service_exec`, `python -m infra.stack.restart_listener`) and the fleet's Postgres
and Redis."""
