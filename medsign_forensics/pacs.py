"""A small read-only client for the PACS a scan reads from: Orthanc's REST API or any DICOMweb server.

Two ways to list and fetch instances, chosen from the URL (or explicitly with :class:`PacsApi`):

* Orthanc REST (``http://host:8042``): ``GET /instances?expand&since=K&limit=L`` pages through every instance
  with its SOP Instance UID; ``GET /instances/{id}/file`` returns the stored DICOM file byte for byte.
* DICOMweb (a URL ending in ``/dicom-web``, e.g. Orthanc's plugin): QIDO-RS ``GET {base}/instances?offset&limit``
  lists instances; WADO-RS ``GET {base}/studies/{s}/series/{r}/instances/{i}`` with
  ``transfer-syntax=*`` returns the instance as stored, in a multipart/related body.

Basic authentication comes from the URL (``http://user:password@host``) or from arguments; credentials are
never part of :attr:`PacsClient.url`, labels or reports. Redirects are refused (they could carry credentials to
another host), and each response is capped in size. Uses only the standard library.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from medsign_forensics.errors import ImageReadError, InputError

PAGE_SIZE = 500
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB per response: far above any radiograph
_DICOM_JSON_SOP_INSTANCE_UID = "00080018"
_DICOM_JSON_STUDY_UID = "0020000D"
_DICOM_JSON_SERIES_UID = "0020000E"


class PacsApi(str, Enum):
    """Which protocol to speak."""

    AUTO = "auto"  # DICOMweb when the URL path ends in /dicom-web, else Orthanc REST
    REST = "rest"
    DICOMWEB = "dicomweb"


@dataclass(frozen=True)
class InstanceRef:
    """One stored instance: how to fetch it and what it is."""

    instance_id: str  # Orthanc's instance ID (REST) or the SOP Instance UID (DICOMweb)
    sop_instance_uid: str | None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    # DICOMweb addresses an instance by its UIDs, which two stored objects may share (a PACS that accepted a
    # duplicate): then this is the k-th (0-based) of ``occurrences`` objects listed under the same address.
    occurrence: int = 0
    occurrences: int = 1


@dataclass(frozen=True)
class PacsConfig:
    """Everything needed to talk to one PACS; picklable, so scan workers can build their own client."""

    url: str  # without credentials
    api: PacsApi
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES


def pacs_config(url: str, *, username: str | None = None, password: str | None = None,
                api: PacsApi | str = PacsApi.AUTO, timeout: float = DEFAULT_TIMEOUT_S,
                max_bytes: int = DEFAULT_MAX_BYTES) -> PacsConfig:
    """Parse ``url`` (credentials in it are taken out) and decide the API."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"the PACS URL must be http:// or https:// with a host name, e.g. http://127.0.0.1:8042; "
                         f"got {_without_credentials(url)!r}")
    if parts.query or parts.fragment:
        raise InputError("the PACS URL must not carry a query or fragment; give the server's base URL")
    if parts.username is not None:
        username = username if username is not None else urllib.parse.unquote(parts.username)
        password = password if password is not None else urllib.parse.unquote(parts.password or "")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    chosen = PacsApi(api)
    if chosen is PacsApi.AUTO:
        chosen = PacsApi.DICOMWEB if parts.path.rstrip("/").endswith("/dicom-web") else PacsApi.REST
    return PacsConfig(url=base, api=chosen, username=username, password=password, timeout=timeout,
                      max_bytes=max_bytes)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {_without_credentials(newurl)} refused",
                                     headers, fp)


class PacsClient:
    """Lists and retrieves instances. Raises InputError when the server cannot be used at all (unreachable,
    refused credentials, not the expected API) and ImageReadError when one instance cannot be fetched."""

    def __init__(self, config: PacsConfig) -> None:
        self.config = config
        self._opener = urllib.request.build_opener(_NoRedirect())

    @property
    def url(self) -> str:
        return self.config.url

    def instance_label(self, ref: InstanceRef) -> str:
        """A stable, credential-free name for an instance in reports (objects sharing one DICOMweb address get
        ``#1``, ``#2``, ... so that each has its own report row)."""
        if self.config.api is PacsApi.REST:
            return f"{self.url}/instances/{ref.instance_id}"
        label = (f"{self.url}/studies/{ref.study_instance_uid}/series/{ref.series_instance_uid}"
                 f"/instances/{ref.sop_instance_uid}")
        return label if ref.occurrences == 1 else f"{label}#{ref.occurrence + 1}"

    def listed(self) -> list[InstanceRef]:
        """:meth:`instances`, with objects that share a DICOMweb address numbered (``occurrence``)."""
        refs = list(self.instances())
        if self.config.api is PacsApi.REST:
            return refs
        address = lambda ref: (ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)  # noqa: E731
        total = Counter(address(ref) for ref in refs)
        seen: Counter = Counter()
        numbered = []
        for ref in refs:
            key = address(ref)
            numbered.append(replace(ref, occurrence=seen[key], occurrences=total[key]))
            seen[key] += 1
        return numbered

    # -- listing -----------------------------------------------------------------------------------------

    def instances(self, *, page_size: int = PAGE_SIZE) -> Iterator[InstanceRef]:
        """Every instance the server holds, page by page."""
        if self.config.api is PacsApi.REST:
            yield from self._rest_instances(page_size)
        else:
            yield from self._qido_instances(page_size)

    def _rest_instances(self, page_size: int) -> Iterator[InstanceRef]:
        since = 0
        while True:
            page = self._get_json(f"/instances?expand&since={since}&limit={page_size}")
            if not isinstance(page, list):
                raise InputError(f"{self.url}/instances did not return a list; is this an Orthanc server? "
                                 "For DICOMweb give the URL ending in /dicom-web")
            for item in page:
                if not isinstance(item, dict) or not isinstance(item.get("ID"), str):
                    raise InputError(f"{self.url}/instances returned an entry without an ID; is this Orthanc?")
                tags = item.get("MainDicomTags") or {}
                yield InstanceRef(instance_id=item["ID"], sop_instance_uid=tags.get("SOPInstanceUID"))
            if len(page) < page_size:
                return
            since += len(page)

    def _qido_instances(self, page_size: int) -> Iterator[InstanceRef]:
        offset = 0
        while True:
            page = self._get_json(f"/instances?offset={offset}&limit={page_size}",
                                  accept="application/dicom+json")
            if page is None:  # 204 No Content: nothing (more) stored
                return
            if not isinstance(page, list):
                raise InputError(f"{self.url}/instances did not return a DICOM JSON list; is this a DICOMweb "
                                 "QIDO-RS endpoint?")
            for item in page:
                sop, study, series = (_dicom_json_value(item, tag) for tag in
                                      (_DICOM_JSON_SOP_INSTANCE_UID, _DICOM_JSON_STUDY_UID, _DICOM_JSON_SERIES_UID))
                if not (sop and study and series):
                    raise InputError(f"a QIDO-RS result from {self.url} lacks the study, series or SOP Instance "
                                     "UID; cannot retrieve it")
                yield InstanceRef(instance_id=sop, sop_instance_uid=sop, study_instance_uid=study,
                                  series_instance_uid=series)
            if len(page) < page_size:
                return
            offset += len(page)

    # -- retrieval ---------------------------------------------------------------------------------------

    def retrieve(self, ref: InstanceRef) -> bytes:
        """The instance's DICOM file (Part 10 bytes)."""
        label = self.instance_label(ref)
        try:
            if self.config.api is PacsApi.REST:
                data, _ = self._get(f"/instances/{urllib.parse.quote(ref.instance_id)}/file",
                                    accept="application/dicom")
                return data
            path = "/studies/{}/series/{}/instances/{}".format(
                *(urllib.parse.quote(str(uid)) for uid in
                  (ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)))
            data, content_type = self._get(path, accept='multipart/related; type="application/dicom"; '
                                                        "transfer-syntax=*")
        except _HttpProblem as error:
            raise ImageReadError(f"cannot be retrieved: {error.problem}", path=label) from None
        parts = multipart_parts(data, content_type)
        if len(parts) != ref.occurrences:
            raise ImageReadError(f"WADO-RS returned {len(parts)} parts where the listing has {ref.occurrences} "
                                 "DICOM instance(s) at this address", path=label)
        return parts[ref.occurrence]

    # -- HTTP --------------------------------------------------------------------------------------------

    def _get_json(self, path: str, *, accept: str = "application/json") -> Any:
        data, _ = self._get(path, accept=accept)
        if not data:
            return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{self.url}{path.split('?')[0]} did not return JSON; check the URL and --pacs-api") \
                from None

    def _get(self, path: str, *, accept: str) -> tuple[bytes, str]:
        request = urllib.request.Request(self.url + path, headers={"Accept": accept}, method="GET")
        if self.config.username is not None:
            token = f"{self.config.username}:{self.config.password or ''}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(token).decode("ascii"))
        where = self.url + path.split("?")[0]
        try:
            with self._opener.open(request, timeout=self.config.timeout) as response:
                data = response.read(self.config.max_bytes + 1)
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise _HttpProblem(where, f"the PACS refused the credentials (HTTP {error.code}); give "
                                   "--pacs-user and --pacs-password (or user:password@ in the URL)") from None
            raise _HttpProblem(where, f"HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise _HttpProblem(where, f"the PACS cannot be reached ({getattr(error, 'reason', error)})") from None
        if len(data) > self.config.max_bytes:
            raise _HttpProblem(where, f"the response is larger than {self.config.max_bytes:,} bytes")
        return data, content_type


class _HttpProblem(InputError):
    """An HTTP request failed; ``problem`` is the reason without the URL."""

    def __init__(self, where: str, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{where}: {problem}")


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a multipart/related response (RFC 2046), e.g. WADO-RS instances."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not content_type.lower().startswith("multipart/") or match is None:
        raise ImageReadError(f"expected a multipart/related response, got {content_type or 'no Content-Type'!r}")
    delimiter = b"--" + match.group(1).strip().encode("ascii")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        header_end = chunk.find(b"\r\n\r\n")
        if header_end < 0:
            raise ImageReadError("a multipart part has no header/body separator")
        content = chunk[header_end + 4:]
        if content.endswith(b"\r\n"):
            content = content[:-2]
        parts.append(content)
    return parts


def _dicom_json_value(item: Any, tag: str) -> str | None:
    if not isinstance(item, dict):
        return None
    element = item.get(tag) or item.get(tag.lower())
    values = element.get("Value") if isinstance(element, dict) else None
    return str(values[0]) if isinstance(values, list) and values else None


def _without_credentials(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)
