"""Access failures of remote stores, said once for every caller (bundle fetch and push,
storage inputs and outputs): is an exception an authentication / authorisation refusal,
which settings give a scheme its credentials, and the head of the message either way."""
from __future__ import annotations

from quasar.text import safe_text

_AUTH_TEXT = ("Unauthorized", "401", "403", "AccessDenied", "InvalidAccessKeyId",
              "SignatureDoesNotMatch")

_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE (and "
          "AWS_ENDPOINT_URL for MinIO / Ceph)",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`",
    "hf": "set HF_TOKEN (or run `hf auth login`) with access to the repository",
}


def is_auth_error(exc: BaseException) -> bool:
    """Did the store refuse access (no credentials, wrong ones, no permission)?"""
    text = str(exc)
    return ("Credential" in type(exc).__name__ or isinstance(exc, PermissionError)
            or any(t in text for t in _AUTH_TEXT))


def credentials_hint(scheme: str) -> str:
    """What to set so that ``scheme``'s client finds credentials (``gcs`` spells ``gs``)."""
    return _HINTS.get("gs" if scheme == "gcs" else scheme, "check the URL's access rights")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The exception's first line (its type name when it has no text), made safe to print."""
    raw = str(exc).strip()
    return safe_text(raw.splitlines()[0] if raw else type(exc).__name__)[:limit]


def failed_message(url: str, what: str, exc: BaseException, advice: str) -> str:
    """``URL: what failed (Type: first line); advice`` - a network or service failure."""
    return f"{safe_text(url)}: {what} failed ({type(exc).__name__}: {first_line(exc)}); {advice}"


def denied_message(url: str, scheme: str, what: str, exc: BaseException) -> str:
    """``URL: what: access denied or no credentials (Type: first line); how to fix``."""
    return (f"{safe_text(url)}: {what}: access denied or no credentials "
            f"({type(exc).__name__}: {first_line(exc)}); {credentials_hint(scheme)}")
