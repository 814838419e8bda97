"""Keep-alive connections under the SendGrid SDK.

``python_http_client`` (the SDK's HTTP layer) builds a new urllib opener for every call,
so every email paid a TCP connection and, against api.sendgrid.com, a TLS handshake: a
round trip or two before the request could leave. This client is the SDK's own, with only
its transport swapped for a urllib3 pool; the SDK still builds the URL, headers and body,
and its exceptions and ``Response`` come out as before.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, getproxies, proxy_bypass

import urllib3
from python_http_client import Client
from python_http_client.exceptions import handle_error
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout


class _Reply:
    """What ``python_http_client.Response`` reads from a urllib response."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def getcode(self) -> int:
        return self._response.status

    def read(self) -> bytes:
        return self._response.data

    def info(self) -> Any:
        return self._response.headers


class KeepAliveClient(Client):
    """``python_http_client.Client`` whose requests share a pool of open connections."""

    def __init__(self, *args: Any, pool: urllib3.PoolManager, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = pool

    def _build_client(self, name: str | None = None) -> KeepAliveClient:
        url_path = self._url_path + [name] if name else self._url_path
        return KeepAliveClient(
            host=self.host,
            version=self._version,
            request_headers=self.request_headers,
            url_path=url_path,
            append_slash=self.append_slash,
            timeout=self.timeout,
            pool=self.pool,
        )

    def _make_request(self, opener: Any, request: Request, timeout: float | None = None) -> Any:
        """urllib's contract: a response, an SDK HTTPError for >= 400, URLError otherwise."""
        timeout = timeout or self.timeout
        try:
            response = self.pool.request(
                request.get_method(),
                request.full_url,
                body=request.data,  # type: ignore[arg-type]
                headers=dict(request.header_items()),
                timeout=urllib3.Timeout(total=timeout),
                # Temporal owns retries. urllib3 drops a pooled connection the server has
                # closed before it reuses it, so no request is sent twice from here.
                retries=False,
                redirect=False,
            )
        except NewConnectionError as exc:  # refused or unresolvable: no timeout, though
            raise URLError(exc) from exc  # urllib3 files it under ConnectTimeoutError
        except Urllib3Timeout as exc:
            raise TimeoutError(str(exc)) from exc
        except Urllib3Error as exc:
            raise URLError(exc) from exc
        if response.status >= 400:
            error = HTTPError(
                request.full_url,
                response.status,
                response.reason or "",
                response.headers,  # type: ignore[arg-type]
                io.BytesIO(response.data),
            )
            raise handle_error(error)
        return _Reply(response)


def keep_alive_client(
    host: str, request_headers: dict[str, str], timeout: float, connections: int
) -> Client:
    """The SDK's v3 client over a pool keeping up to ``connections`` idle connections
    (more are opened when needed, and closed after use)."""
    return KeepAliveClient(
        host=host,
        request_headers=request_headers,
        version=3,
        timeout=timeout,
        pool=_pool(host, connections),
    )


def _pool(host: str, connections: int) -> urllib3.PoolManager:
    """Through the proxy the environment names (HTTPS_PROXY, NO_PROXY), as urllib did."""
    url = urlsplit(host)
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(url.hostname or ""):
        return urllib3.ProxyManager(proxy, maxsize=connections, block=False)
    return urllib3.PoolManager(maxsize=connections, block=False)
