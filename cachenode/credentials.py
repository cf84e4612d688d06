"""Azure storage credentials as users configure them, and where each may be sent (no Azure SDK here)."""

from __future__ import annotations

from dataclasses import dataclass

from .flags import flag
from .source import SourceRef


@dataclass(frozen=True)
class AzureCredentials:
    """The ways Azure users already configure tools; the first one given wins.

    connection string > account key > SAS token > DefaultAzureCredential (azure-identity).
    The fields are also `cachenode serve`'s flags (cachenode/flags.py).
    """

    connection_string: str | None = flag(None, "--connection-string", "Azure Storage connection string.",
                                         env="AZURE_STORAGE_CONNECTION_STRING")
    account_name: str | None = flag(None, "--account-name", "Storage account.", env="AZURE_STORAGE_ACCOUNT_NAME")
    account_key: str | None = flag(None, "--account-key", "Account key.", env="AZURE_STORAGE_ACCOUNT_KEY")
    sas_token: str | None = flag(None, "--sas-token", "SAS token.", env="AZURE_STORAGE_SAS_TOKEN")
    endpoint: str | None = flag(None, "--blob-endpoint", "Blob service URL, if not "
                                "https://<account>.blob.core.windows.net.", env="AZURE_STORAGE_BLOB_ENDPOINT")
    use_default_credential: bool = True

    @property
    def account(self) -> str | None:
        """The storage account these credentials are for, if known."""
        if self.connection_string:
            fields = _conn_fields(self.connection_string)
            if "accountname" in fields:
                return fields["accountname"]
            endpoint = fields.get("blobendpoint", "")
            return endpoint.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or None
        return self.account_name

    @property
    def configured(self) -> bool:
        return bool(self.connection_string or self.account_name)

    def service_url(self) -> str:
        if self.connection_string:
            fields = _conn_fields(self.connection_string)
            if "blobendpoint" in fields:
                return fields["blobendpoint"].rstrip("/")
            proto = fields.get("defaultendpointsprotocol", "https")
            suffix = fields.get("endpointsuffix", "core.windows.net")
            return f"{proto}://{fields.get('accountname')}.blob.{suffix}"
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return f"https://{self.account_name}.blob.core.windows.net"


# Storage endpoints Azure itself runs (public, China, US Government clouds).
AZURE_SUFFIXES = ("core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net")


def bypass_credentials(own: AzureCredentials, ref: SourceRef) -> AzureCredentials:
    """What a loader may send, and where, to read `ref` itself (no node answered).

    Credentials only ever go to the endpoint they belong to: the configured one for their own
    account, whatever host the URL named. For another account, an identity token goes only to
    that account's endpoint in an Azure cloud (https://<account>.blob.core.windows.net and the
    sovereign suffixes); any other host the URL names is read anonymously (public containers).
    """
    if own.configured and own.account == ref.account:
        return own
    official = [f"https://{ref.account}.blob.{suffix}" for suffix in AZURE_SUFFIXES]
    if ref.endpoint is None or ref.endpoint in official:
        return AzureCredentials(account_name=ref.account, endpoint=ref.endpoint or official[0])
    return AzureCredentials(account_name=ref.account, endpoint=ref.endpoint, use_default_credential=False)


def _conn_fields(conn: str) -> dict[str, str]:
    out = {}
    for part in conn.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out
