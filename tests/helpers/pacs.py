"""A fake PACS: Orthanc-like REST and DICOMweb endpoints over in-memory files, for the scan tests."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler


class FakePacs(BaseHTTPRequestHandler):
    """Orthanc-like REST and DICOMweb endpoints over two files; user 'u', password 'p'."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.requests.append(self.path)
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"u:p").decode():
            return self._reply(401, b"", "text/plain")
        names = sorted(self.files)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://example.invalid/")
            self.end_headers()
            return None
        if self.path.startswith("/instances?"):
            query = dict(part.split("=") for part in self.path.split("?")[1].split("&") if "=" in part)
            since, limit = int(query["since"]), int(query["limit"])
            page = [{"ID": name, "MainDicomTags": {"SOPInstanceUID": f"1.2.{i}"}}
                    for i, name in enumerate(names)][since:since + limit]
            return self._reply(200, json.dumps(page).encode(), "application/json")
        if self.path.startswith("/instances/") and self.path.endswith("/file"):
            name = self.path.split("/")[2]
            if name not in self.files:
                return self._reply(404, b"", "text/plain")
            return self._reply(200, self.files[name], "application/dicom")
        if self.path.startswith("/dicom-web/instances?"):
            page = [{"00080018": {"vr": "UI", "Value": [name]}, "0020000D": {"vr": "UI", "Value": ["1.2"]},
                     "0020000E": {"vr": "UI", "Value": ["1.2.3"]}} for name in names]
            return self._reply(200, json.dumps(page).encode(), "application/dicom+json")
        if self.path.startswith("/dicom-web/studies/1.2/series/1.2.3/instances/"):
            name = self.path.rsplit("/", 1)[1]
            body = b"--XYZ\r\nContent-Type: application/dicom\r\n\r\n" + self.files[name] + b"\r\n--XYZ--\r\n"
            return self._reply(200, body, 'multipart/related; type="application/dicom"; boundary=XYZ')
        return self._reply(404, b"", "text/plain")
