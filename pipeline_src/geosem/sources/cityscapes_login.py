"""Cityscapes' login for the downloads: cityscapesscripts' csDownload flow, done with ``requests``.

csDownload (cityscapesscripts 2.2.4 / 2.3.0, ``download/downloader.py``) logs in by POSTing ``username``,
``password`` and ``submit=Login`` to ``<site>/login`` (an HTTP 302 is success), lists the packages as JSON
at ``/downloads/?list``, reads each package's md5 from ``/md5-sum/?packageID=N`` and serves it from
``/file-handling/?packageID=N``. GeoSem follows the same steps and reads the same credentials file, but
does not call csDownload itself: it prompts on the terminal when the file is missing (a batch job would
hang), deletes the user's credentials file after one refused login, hard-codes the host (no mirror, no
test server) and writes into the destination without a checksum-gated rename.

Credentials: the JSON file ``{"username": ..., "password": ...}`` named by ``$GEOSEM_CITYSCAPES_CREDENTIALS``,
else csDownload's own ``credentials.json`` in ``appdirs.user_data_dir("cityscapesscripts", "cityscapes")``
(``~/.local/share/cityscapesscripts/credentials.json`` on Linux). The password is only ever sent in the
POST body: no message, log line or file GeoSem writes contains it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from geosem.sources.archive_registry import Archive
from geosem.sources.download import DownloadError

CREDENTIALS_VARIABLE = "GEOSEM_CITYSCAPES_CREDENTIALS"
REGISTER = "https://www.cityscapes-dataset.com/register/"


class CredentialsError(DownloadError):
    """No usable Cityscapes login; the message says where the credentials go, never what they are."""


def standard_credentials_path() -> Path:
    """csDownload's file. platformdirs (a pooch dependency) gives appdirs' folder for the same names."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("cityscapesscripts", "cityscapes")) / "credentials.json"


def credentials_path() -> Path:
    named = os.environ.get(CREDENTIALS_VARIABLE)
    return Path(named).expanduser() if named else standard_credentials_path()


def _where() -> str:
    return (
        f'write {{"username": "...", "password": "..."}} to {credentials_path()} '
        f"(cityscapesscripts' csDownload reads the same file; ${CREDENTIALS_VARIABLE} names another file)"
    )


def read_credentials(path: Path | None = None) -> dict[str, str]:
    path = credentials_path() if path is None else Path(path)
    if not path.is_file():
        raise CredentialsError(
            f"Cityscapes needs a login and there are no credentials at {path}: {_where()}; "
            f"an account is made at {REGISTER}"
        )
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):  # the text may hold the password: never quote it
        raise CredentialsError(f"{path} is not a JSON file of username and password: {_where()}") from None
    if not isinstance(values, dict) or not values.get("username") or not values.get("password"):
        raise CredentialsError(f"{path} lacks a username or a password: {_where()}")
    return {"username": str(values["username"]), "password": str(values["password"])}


def login(site: str, path: Path | None = None) -> Any:
    """A ``requests`` session logged in to ``site``; a refused login names the credentials file."""
    import requests

    path = credentials_path() if path is None else Path(path)
    credentials = read_credentials(path)
    session = requests.Session()
    try:
        session.get(f"{site}/login", allow_redirects=False, timeout=60).raise_for_status()
        answer = session.post(
            f"{site}/login", data={**credentials, "submit": "Login"}, allow_redirects=False, timeout=60
        )
    except requests.RequestException as error:  # its text names the URL only, never the POST body
        raise DownloadError(
            f"cannot reach the Cityscapes login at {site}/login: {type(error).__name__}"
        ) from None
    if answer.status_code != 302:
        raise CredentialsError(
            f"the Cityscapes site refused the login of the account in {path} (HTTP {answer.status_code}, "
            f"not the redirect a good login gets): correct the username or password there; {_where()}"
        )
    return session


def cityscapes_package(archive: Archive, site: str) -> tuple[Any, str, str | None]:
    """Log in and find ``archive``'s package: (session, file URL, the site's md5 or None)."""
    session = login(site)
    name = archive.package or archive.file
    listing = session.get(f"{site}/downloads/?list", allow_redirects=False, timeout=60)
    try:
        packages = {str(p["name"]): int(p["packageID"]) for p in listing.json()}
    except (ValueError, KeyError, TypeError):
        raise DownloadError(
            f"the Cityscapes site at {site} sent no package list (HTTP {listing.status_code}); "
            "the login did not hold, or the site changed"
        ) from None
    if name not in packages:
        raise DownloadError(
            f"the Cityscapes site does not offer {name!r} to this account (it lists {len(packages)} "
            f"packages); accept the package's terms on the site or correct the registry"
        )
    package_id = packages[name]  # the site's id, not the registry's: ids are the site's to change
    answer = session.get(f"{site}/md5-sum/?packageID={package_id}", allow_redirects=False, timeout=60)
    words = answer.text.split() if answer.status_code == 200 else []
    md5 = words[0].lower() if words and len(words[0]) == 32 else None
    return session, f"{site}/file-handling/?packageID={package_id}", md5
