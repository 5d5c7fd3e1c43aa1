"""Who may use the web app: a Host allow-list, a same-origin rule for requests that change
things, and an optional bearer token, as one ASGI middleware in front of `serving`'s app.

Why each one: a server on 127.0.0.1 is still reachable from every web page the user opens. A
browser sends a cross-site "simple" POST (text/plain, a form) without asking first, so the
Origin check refuses such POSTs before their body is read. A DNS-rebinding page (its name made
to resolve to 127.0.0.1) may even read answers, but its requests carry its own name as Host,
which the allow-list refuses. A server bound beyond loopback is open to anyone who reaches the
port: the token closes the API to those who lack it. The page's own files and /healthz stay
public (they hold nothing private), so the page can load and ask for the token; /healthz also
answers any Host, for probes that address the server by its IP.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import re
from typing import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")  # binds every interface: no one name clients will use
PUBLIC_PATHS = ("/", "/healthz")
# Load balancers and probes address a server by its IP; the health check tells them only the
# model's name, so it answers whatever the Host.
ANY_HOST_PATHS = ("/healthz",)
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
TOKEN_ENV = "SAPNET_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
# A token travels in a header: printable ASCII without spaces, so it never needs quoting.
TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
HOST_NAME = re.compile(r"\*|[a-z0-9_.:-]+")


@dataclasses.dataclass(frozen=True)
class Access:
  """`hosts`: the names the Host header may carry ("*": any); `token`: the bearer token the
  API requires, or None for none."""
  hosts: tuple[str, ...] = LOOPBACK_HOSTS
  token: str | None = dataclasses.field(default=None, repr=False)  # never in a log

  def __post_init__(self):
    # Names are the command's flags: these errors reach its user as they are.
    for name in self.hosts:
      if not HOST_NAME.fullmatch(name):
        raise ValueError(f"--allow-host: {name!r} is not a host name or address (give a name "
                         "like photos.example.org, an address, or * for any)")
    if self.token is not None:
      check_token(self.token, "token")


def check_token(token: str, source: str) -> None:
  """Refuses a token that is weak or cannot travel in a header; `source` (the flag, file or
  variable it came from) starts the message."""
  if not TOKEN_CHARS.fullmatch(token):
    raise ValueError(f"{source}: the token must be printable ASCII without spaces")
  if len(token) < MIN_TOKEN_CHARS:
    raise ValueError(f"{source}: the token must have at least {MIN_TOKEN_CHARS} characters, got "
                     f"{len(token)} (make one with: python -c \"import secrets; "
                     "print(secrets.token_urlsafe())\")")


def access_for(bind: str, allow_hosts: Sequence[str] = (), token: str | None = None) -> Access:
  """The default allow-list (loopback names, and `bind` when it is one address rather than
  all of them) extended by `allow_hosts`."""
  hosts = list(LOOPBACK_HOSTS)
  for name in [bind.strip("[]")] * (bind not in ANY_ADDRESS) + list(allow_hosts):
    name = name.strip().lower().strip("[]").rstrip(".")
    if name not in hosts:
      hosts.append(name)
  return Access(tuple(hosts), token)


def is_loopback(host: str) -> bool:
  """Whether `host` (a name or an address) can only be reached from this machine."""
  host = host.strip("[]").lower().rstrip(".")
  if host == "localhost" or host.endswith(".localhost"):
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:  # another name: it may resolve to any interface
    return False


def exposure_warning(bind: str, access: Access) -> str | None:
  """What to tell the operator of a server bound beyond this machine; None on loopback."""
  if is_loopback(bind):
    return None
  where = "every interface" if bind in ANY_ADDRESS else bind
  guard = ("the API requires the token, but it travels in clear text: put a reverse proxy "
           "with TLS in front" if access.token else "anyone who can reach this port can use "
           f"the server: give a token (--token-file or ${TOKEN_ENV}) or put a reverse proxy "
           "with authentication in front")
  names = "any name" if "*" in access.hosts else ", ".join(access.hosts)
  return (f"serving on {where}, not only this machine: {guard}. Clients must address it by "
          f"one of: {names} (add names with --allow-host)")


def host_of(value: str | None) -> str | None:
  """The name in a Host header or URL authority ("Name:8000", "[::1]:8000"), lower case."""
  if not value:
    return None
  try:
    name = urlsplit(f"//{value}").hostname
  except ValueError:  # an unbalanced bracket
    return None
  return name.rstrip(".") if name else None


def netloc_of(url: str) -> str | None:
  """`scheme://host:port` of an Origin or Referer, without default ports, lower case."""
  try:
    parts = urlsplit(url)
    port = parts.port
  except ValueError:
    return None
  if not parts.hostname or parts.scheme not in ("http", "https"):
    return None  # "null" (a sandboxed or file: page) and the like have no origin to match
  default = {"http": 80, "https": 443}[parts.scheme]
  host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
  return host if port in (None, default) else f"{host}:{port}"


def own_netloc(host_header: str, scheme: str) -> str | None:
  return netloc_of(f"{scheme}://{host_header}")


class AccessGuard:
  """ASGI middleware enforcing `access`; refusals are JSON like every error of the API, sent
  before the request body is read (so nothing is decoded or computed for them)."""

  def __init__(self, app: ASGIApp, access: Access):
    self.app, self.access = app, access
    self.any_host = "*" in access.hosts

  async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] not in ("http", "websocket"):
      await self.app(scope, receive, send)
      return
    refusal = self.check(scope)
    if refusal is None:
      await self.app(scope, receive, send)
      return
    status, message = refusal
    headers = {"WWW-Authenticate": 'Bearer realm="sapnet-serve"'} if status == 401 else None
    await JSONResponse({"error": message}, status, headers)(scope, receive, send)

  def check(self, scope: Scope) -> tuple[int, str] | None:
    headers = Headers(scope=scope)
    host_header = headers.get("host", "")
    host = host_of(host_header)
    if not (self.any_host or host in self.access.hosts or scope["path"] in ANY_HOST_PATHS):
      shown = repr(host_header[:100]) if host_header else "(none)"
      return 400, (f"Host header {shown} is not a name this server answers to; its operator "
                   "can add one with --allow-host")
    if scope.get("method", "GET") not in SAFE_METHODS:
      refusal = self.cross_site(headers, own_netloc(host_header, scope.get("scheme", "http")))
      if refusal:
        return 403, refusal
    if self.access.token is not None and not is_public(scope["path"]):
      scheme, _, given = headers.get("authorization", "").partition(" ")
      if scheme.lower() != "bearer" or not hmac.compare_digest(
          given.strip().encode("utf-8", "replace"), self.access.token.encode()):
        return 401, ("missing or wrong token: this server requires the header "
                     "'Authorization: Bearer <token>'")
    return None

  @staticmethod
  def cross_site(headers: Headers, own: str | None) -> str | None:
    """Why a request that changes things comes from another site's page, or None. Browsers
    send Origin with every POST (older ones at least Sec-Fetch-Site or Referer); a program
    like curl sends none of them and is let through."""
    origin = headers.get("origin")
    if origin is not None:
      if netloc_of(origin) != own or own is None:
        return (f"cross-site request refused: Origin {origin[:100]!r} is not this server's "
                "own page")
      return None
    site = headers.get("sec-fetch-site")
    if site is not None:
      return None if site in ("same-origin", "none") else (
          f"cross-site request refused (Sec-Fetch-Site: {site[:40]})")
    referer = headers.get("referer")
    if referer is not None and netloc_of(referer) != own:
      return "cross-site request refused: Referer is not this server's own page"
    return None


def is_public(path: str) -> bool:
  return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
