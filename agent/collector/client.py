"""A reader's HTTP client of a collector's query API (/api/v1), for `gitops-collector hosts|drift|...`.

The one place on the collector side that speaks HTTP to a collector. It returns the API's JSON as it
came (dicts and lists) and raises a `ClientError` child with one readable line for everything else:
a bad URL or token file (`ClientConfigError`), a collector that cannot be reached or is unavailable
(`UnreachableError`), a refused token (`AuthError`), something that does not exist (`NotFoundError`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from agent.collector.errors import CollectorError

if TYPE_CHECKING:  # imported where a request is made, so that the CLI's parser can read the names below
    import httpx

URL_ENV = "GITOPS_COLLECTOR_URL"
TOKEN_FILE_ENV = "GITOPS_COLLECTOR_TOKEN_FILE"  # noqa: S105 (a variable's name)
TOKEN_ENV = "GITOPS_COLLECTOR_TOKEN"  # noqa: S105 (a variable's name)
CA_FILE_ENV = "GITOPS_COLLECTOR_CA_FILE"
DEFAULT_URL = "http://127.0.0.1:8080"
PAGE_LIMIT = 1000  # the API's largest page


class ClientError(CollectorError):
    """A query from the command line failed; str(e) is one line. `exit_code` follows sysexits.h."""

    exit_code = 1


class ClientConfigError(ClientError):
    """The URL, token or CA file given is unusable (EX_CONFIG)."""

    exit_code = 78


class UnreachableError(ClientError):
    """No answer from the collector, or it answered 503 (EX_UNAVAILABLE)."""

    exit_code = 69


class AuthError(ClientError):
    """The collector refused the token: 401 or 403 (EX_NOPERM)."""

    exit_code = 77


class NotFoundError(ClientError):
    """The host, run or commit asked for is not known to the collector (EX_NOINPUT)."""

    exit_code = 66


def check_url(url: str) -> str:
    """`url` without a trailing slash; refused unless it is http(s)://HOST[:PORT][/PATH]."""
    try:
        parts = urlsplit(url.strip())
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok, parts = False, urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query:
        raise ClientConfigError(f"collector URL {url!r}: expected http(s)://HOST[:PORT], "
                                f"e.g. {DEFAULT_URL}")
    return url.strip().rstrip("/")


def read_token_file(path: Path) -> str:
    """The token in `path` (first line). Refused when missing, empty, or readable by group or others
    (the rule `gitops-agent` applies to its token file, and ssh to keys)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClientConfigError(f"token file {path}: no such file") from None
    except OSError as e:
        raise ClientConfigError(f"token file {path}: cannot read it ({e.strerror})") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClientConfigError(f"token file {path}: mode {stat.S_IMODE(mode):04o} lets others read it; "
                                f"chmod 600 {path}")
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ClientConfigError(f"token file {path}: empty")
    return token


def default_token_file() -> Path:
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "gitops-collector" / "token"


def find_token(token_file: str | None, environ: dict[str, str]) -> str:
    """From `--token-file`, else $GITOPS_COLLECTOR_TOKEN_FILE, else $GITOPS_COLLECTOR_TOKEN, else
    ~/.config/gitops-collector/token when it exists. Never from the command line itself."""
    path = token_file or environ.get(TOKEN_FILE_ENV)
    if path:
        return read_token_file(Path(path))
    if environ.get(TOKEN_ENV, "").strip():
        return environ[TOKEN_ENV].strip()
    fallback = default_token_file()
    if fallback.exists():
        return read_token_file(fallback)
    raise ClientConfigError(f"no reader token: give --token-file FILE, or set {TOKEN_FILE_ENV} or "
                            f"{TOKEN_ENV} (gitops-collector token create --reader NAME makes one)")


@dataclass
class FleetClient:
    """GET requests to one collector with a reader token. Use as a context manager."""

    url: str
    token: str
    ca_file: str | None = None
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        import httpx

        self.url = check_url(self.url)
        verify: Any = True
        if self.ca_file:
            if not Path(self.ca_file).is_file():
                raise ClientConfigError(f"CA file {self.ca_file}: no such file")
            verify = self.ca_file
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout_s, verify=verify,
                                  headers={"Authorization": f"Bearer {self.token}",
                                           "Accept": "application/json"})

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> Any:
        """GET /api/v1/PATH (segments already quoted) with the params that are not None."""
        import httpx

        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._http.get(f"/api/v1/{path}", params=query)
        except httpx.HTTPError as e:
            raise UnreachableError(f"cannot reach the collector at {self.url}: {_reason(e)}") from e
        return _answer(response, self.url)

    def pages(self, path: str, limit: int, *, listing: str | None = None,
              **params: Any) -> tuple[dict[str, Any], list[Any]]:
        """Follow `next_offset` until `limit` items (0: all); returns the first page's body and every
        item. `listing` names the key holding the list when it is not the body itself."""
        first: dict[str, Any] | None = None
        items: list[Any] = []
        offset: int | None = 0
        while offset is not None and (limit == 0 or len(items) < limit):
            size = PAGE_LIMIT if limit == 0 else min(PAGE_LIMIT, limit - len(items))
            body = self.get(path, limit=size, offset=offset, **params)
            first = first if first is not None else body
            page = body[listing] if listing else body
            items += page["items"]
            offset = page.get("next_offset")
        assert first is not None
        return first, items


def segment(value: str) -> str:
    """One path segment, quoted (a host name may hold any character)."""
    return quote(value, safe="")


def _reason(error: httpx.HTTPError) -> str:
    text = str(error) or type(error).__name__
    for known in ("Connection refused", "Name or service not known", "certificate verify failed"):
        if known in text:
            return known
    return text.splitlines()[0][:200]


def _answer(response: httpx.Response, url: str) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and body is not None:
        return body
    message = body.get("error") if isinstance(body, dict) else None
    message = message or f"HTTP {response.status_code} from {url}{response.request.url.path}"
    if response.status_code == 404 and isinstance(body, dict) and message != "Not Found":
        raise NotFoundError(message)  # the API's own 404s name what is missing
    if response.status_code in (401, 403):
        raise AuthError(f"the collector refused the token: {message}")
    if response.status_code == 503:
        raise UnreachableError(f"the collector is unavailable: {message}")
    if response.is_success or response.status_code == 404:
        raise ClientConfigError(f"{url} does not look like a collector (HTTP {response.status_code} "
                                f"for {response.request.url.path})")
    raise ClientError(message)
