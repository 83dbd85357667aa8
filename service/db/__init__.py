"""SQL only, one module per aggregate; every function takes the connection first."""

from asyncpg import Connection
from asyncpg.pool import PoolConnectionProxy

# A connection of our own or one lent by the pool: the data functions take either.
Conn = Connection | PoolConnectionProxy
