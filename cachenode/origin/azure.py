"""Azure Blob origin on azure.storage.blob.aio: stat, pinned ranged reads, errors mapped to ours."""

from __future__ import annotations

import random

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

from ..blocks import ObjectInfo
from ..credentials import AzureCredentials
from ..errors import BadRequest, Forbidden, InvalidSource, OriginUnavailable, SourceChanged, SourceNotFound
from ..source import AZURE, SourceRef
from .base import Origin


def _timestamp(when) -> float | None:
    return when.timestamp() if when is not None else None


def _quoted(etag: str) -> str:
    """Listings give ETags bare, properties give them quoted; keys need one spelling."""
    return etag if etag.startswith('"') else f'"{etag}"'


class _Backoff(ExponentialRetry):
    """Storage's retry policy (5xx, throttling, connection errors) with sub-second first backoff.

    The SDK default waits 15 s before the first retry, which turns a blip into a stalled load.
    """

    def __init__(self, retries: int, initial: float) -> None:
        super().__init__(initial_backoff=initial, increment_base=2, retry_total=retries,
                         random_jitter_range=0)
        self._initial = initial

    def get_backoff_time(self, settings) -> float:
        base = self._initial * (2 ** settings["count"])
        return base * random.uniform(0.8, 1.2)


class _BufferWriter:
    """A write-only stream over a memoryview, so the SDK writes straight into the caller's buffer."""

    def __init__(self, dest: memoryview) -> None:
        self._dest = dest
        self._pos = 0

    def write(self, data) -> int:
        n = len(data)
        if self._pos + n > len(self._dest):
            raise BadRequest("origin returned more bytes than requested")
        self._dest[self._pos:self._pos + n] = data
        self._pos += n
        return n

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos


class AzureOrigin(Origin):
    """One storage account. Requests for any other account are refused, never forwarded."""

    def __init__(self, creds: AzureCredentials, *, retries: int = 4, backoff: float = 0.25,
                 timeout: float = 60.0) -> None:
        self._creds = creds
        self.account = creds.account
        self.url = creds.service_url() if creds.configured else "<no blob endpoint configured>"
        self._retry = dict(retry_policy=_Backoff(retries, backoff), connection_timeout=timeout,
                           read_timeout=timeout)
        self._service: BlobServiceClient | None = None

    def _client(self, ref: SourceRef):
        return self._service_for(ref).get_blob_client(ref.container, ref.path)

    def _service_for(self, ref: SourceRef) -> BlobServiceClient:
        if ref.kind != AZURE:
            raise BadRequest(f"{ref} is not an Azure blob")
        if not self._creds.configured:
            raise Forbidden(f"no Azure credentials configured, cannot read {ref}")
        if ref.account != self.account:
            raise Forbidden(
                f"no credentials for storage account {ref.account!r} "
                f"(configured account: {self.account!r}); refusing {ref}"
            )
        if self._service is None:
            try:
                self._service = self._make_service()
            except ValueError as exc:  # e.g. a token credential on a plain-http endpoint
                raise Forbidden(f"cannot read {ref} from {self.url}: {exc} "
                                "(set AZURE_STORAGE_CONNECTION_STRING or an account key/SAS)") from None
        return self._service

    def _make_service(self) -> BlobServiceClient:
        c = self._creds
        if c.connection_string:
            return BlobServiceClient.from_connection_string(c.connection_string, **self._retry)
        if c.account_key:
            cred = {"account_name": c.account_name, "account_key": c.account_key}
            return BlobServiceClient(self.url, credential=cred, **self._retry)
        if c.sas_token:
            return BlobServiceClient(self.url, credential=c.sas_token.lstrip("?"), **self._retry)
        if c.use_default_credential:
            from azure.identity.aio import DefaultAzureCredential

            return BlobServiceClient(self.url, credential=DefaultAzureCredential(), **self._retry)
        return BlobServiceClient(self.url, **self._retry)  # anonymous (public containers)

    async def stat(self, ref: SourceRef) -> ObjectInfo:
        blob = self._client(ref)
        try:
            props = await blob.get_blob_properties()
        except Exception as exc:  # noqa: BLE001 - translated at the edge of the backend
            raise self._translate(exc, ref) from exc
        # Azurite omits the size of empty blobs
        return ObjectInfo(props.size or 0, _quoted(props.etag), _timestamp(props.last_modified))

    async def read_into(self, ref: SourceRef, etag: str, offset: int, dest: memoryview) -> None:
        if len(dest) == 0:
            return
        blob = self._client(ref)
        try:
            stream = await blob.download_blob(
                offset=offset, length=len(dest), etag=etag,
                match_condition=MatchConditions.IfNotModified, max_concurrency=1,
            )
            got = await stream.readinto(_BufferWriter(dest))
        except Exception as exc:  # noqa: BLE001
            err = self._translate(exc, ref, etag)
            if isinstance(err, SourceChanged):
                err = await self._gone_or(err, ref)
            raise err from exc
        if got != len(dest):
            raise SourceChanged.pinned(str(ref), etag, f"expected {len(dest)} bytes at {offset}, got {got}")

    async def _gone_or(self, err: Exception, ref: SourceRef) -> Exception:
        """A failed If-Match also answers for a blob that does not exist (Azurite says 412):
        a missing blob is SourceNotFound (404), not a changed one."""
        try:
            await self._client(ref).get_blob_properties()
        except ResourceNotFoundError as exc:
            return self._translate(exc, ref)
        except Exception:  # noqa: BLE001 - the first error stands
            pass
        return err

    async def list(self, ref: SourceRef, prefix: str) -> list[tuple[SourceRef, ObjectInfo]]:
        cc = self._service_for(ref).get_container_client(ref.container)
        out = []
        try:
            async for b in cc.list_blobs(name_starts_with=prefix):
                try:
                    item = SourceRef(AZURE, ref.account, ref.container, b.name)
                except InvalidSource:
                    continue  # a name with dot or empty segments: not readable through the cache
                out.append((item, ObjectInfo(b.size or 0, _quoted(b.etag), _timestamp(b.last_modified))))
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, ref) from exc
        return out

    def _translate(self, exc: Exception, ref: SourceRef, etag: str = "") -> Exception:
        if isinstance(exc, ResourceModifiedError) or getattr(exc, "status_code", None) == 412:
            return SourceChanged.pinned(str(ref), etag, "the blob's ETag no longer matches")
        if isinstance(exc, ResourceNotFoundError):
            code = str(getattr(exc, "error_code", "") or "")
            what = f"container {ref.container!r}" if "Container" in code else str(ref)
            return SourceNotFound(f"{what} not found at {self.url}")
        if isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) == 403:
            return Forbidden(f"{self.url} refused access to {ref} (403): check the credentials")
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            return OriginUnavailable(f"cannot reach blob endpoint {self.url}: {exc}")
        if isinstance(exc, HttpResponseError):
            if exc.status_code == 416:
                return BadRequest(f"range not satisfiable for {ref}")
            return OriginUnavailable(f"blob endpoint {self.url} answered {exc.status_code} for {ref}")
        return exc

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
            self._service = None
