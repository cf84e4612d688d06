"""Azure storage credentials as users configure them, and where each may be sent (no Azure SDK here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .source import SourceRef


@dataclass(frozen=True)
class AzureCredentials:
    """The ways Azure users already configure tools; the first one given wins.

    connection string > account key > SAS token > DefaultAzureCredential (azure-identity).
    Field metadata makes `cachenode serve`'s options (cachenode/options.py).
    """

    connection_string: str | None = field(default=None, metadata={
        "option": "--connection-string", "env": "AZURE_STORAGE_CONNECTION_STRING",
        "help": "Azure Storage connection string."})
    account_name: str | None = field(default=None, metadata={
        "option": "--account-name", "env": "AZURE_STORAGE_ACCOUNT_NAME", "help": "Storage account."})
    account_key: str | None = field(default=None, metadata={
        "option": "--account-key", "env": "AZURE_STORAGE_ACCOUNT_KEY", "help": "Account key."})
    sas_token: str | None = field(default=None, metadata={
        "option": "--sas-token", "env": "AZURE_STORAGE_SAS_TOKEN", "help": "SAS token."})
    endpoint: str | None = field(default=None, metadata={
        "option": "--blob-endpoint", "env": "AZURE_STORAGE_BLOB_ENDPOINT",
        "help": "Blob service URL, if not https://<account>.blob.core.windows.net."})
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
