"""Free TCP ports on 127.0.0.1 for the servers and coordinators the tests start."""

import socket


def free_port() -> int:
  """A port nothing listens on now (the OS picks it; another process may still take it before
  the caller binds it, which on a test machine is rare enough to ignore)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
