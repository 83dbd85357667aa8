"""Web pages the service serves: the agent's call-link page (/c) and the ops console (/console)."""
