"""The fleet's shared services: Airflow's and MLflow's metadata on Postgres (one database each per
KILN_HOME, created by `kiln up` and migrated by Airflow and MLflow themselves), Celery's broker on
Redis (keys prefixed per stack, so stacks sharing a Redis do not take each other's tasks)."""

from __future__ import annotations

import hashlib
import os
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

POSTGRES_VARIABLE, REDIS_VARIABLE = "KILN_POSTGRES_URL", "KILN_REDIS_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"  # a database to connect to for CREATE DATABASE
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


class FleetServiceError(RuntimeError):
    """Postgres or Redis cannot be used; one line naming which and where."""


@dataclass(frozen=True)
class FleetServices:
    home: Path
    postgres_url: str
    redis_url: str

    @classmethod
    def of(cls, home: Path, env: dict[str, str] | None = None) -> FleetServices:
        env = dict(os.environ) if env is None else env
        return cls(home, env.get(POSTGRES_VARIABLE) or DEFAULT_POSTGRES, env.get(REDIS_VARIABLE) or DEFAULT_REDIS)

    @property
    def key(self) -> str:
        """Names this KILN_HOME's databases and Redis keys."""
        return "kiln_" + hashlib.sha256(str(self.home).encode()).hexdigest()[:10]

    def database(self, role: str) -> str:
        return f"{self.key}_{role}"

    def database_url(self, role: str, driver: str = "postgresql") -> str:
        parts = urlsplit(self.postgres_url)
        return urlunsplit((driver, parts.netloc, f"/{self.database(role)}", parts.query, ""))

    def _admin(self):  # noqa: ANN202 - a psycopg2 connection in autocommit (CREATE DATABASE needs it)
        import psycopg2

        try:
            connection = psycopg2.connect(self.postgres_url, connect_timeout=5)
        except psycopg2.Error as exc:
            raise FleetServiceError(f"Postgres at {self.postgres_url} ({POSTGRES_VARIABLE}) is not usable: "
                                    f"{str(exc).strip().splitlines()[0]}") from None
        connection.autocommit = True
        return connection

    def create_databases(self, roles: tuple[str, ...]) -> list[str]:
        """Create the roles' databases that do not exist yet; return those created."""
        created = []
        with closing(self._admin()) as connection, connection.cursor() as cursor:
            for role in roles:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database(role),))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{self.database(role)}"')
                    created.append(self.database(role))
        return created

    def drop_databases(self, roles: tuple[str, ...]) -> None:
        with closing(self._admin()) as connection, connection.cursor() as cursor:
            for role in roles:
                cursor.execute(f'DROP DATABASE IF EXISTS "{self.database(role)}" WITH (FORCE)')

    def connections(self, roles: tuple[str, ...]) -> int:
        """Open connections to the roles' databases (none may be left after `kiln down`)."""
        with closing(self._admin()) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s)",
                           ([self.database(role) for role in roles],))
            return int(cursor.fetchone()[0])

    def check_redis(self) -> None:
        import redis

        try:
            redis.Redis.from_url(self.redis_url, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            raise FleetServiceError(f"Redis at {self.redis_url} ({REDIS_VARIABLE}) is not usable: {exc}") from None
