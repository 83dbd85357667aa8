"""SQL only, one module per aggregate; every function takes the connection first."""
