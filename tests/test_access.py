"""quasar/access.py: the one reading of a store's access refusals, on the clients' own
exception types (botocore, huggingface_hub), and the credentials hint per scheme."""
from __future__ import annotations

import pytest

from quasar.access import credentials_hint, denied_message, first_line, is_auth_error


def test_botocore_refusals_are_auth_errors_and_outages_are_not():
    exc = pytest.importorskip("botocore.exceptions")
    assert is_auth_error(exc.NoCredentialsError())
    denied = exc.ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}},
                             "GetObject")
    assert is_auth_error(denied)
    bad_key = exc.ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no"}},
                              "ListObjectsV2")
    assert is_auth_error(bad_key)
    assert not is_auth_error(exc.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    missing = exc.ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")
    assert not is_auth_error(missing)


def test_plain_python_errors():
    assert is_auth_error(PermissionError(13, "Permission denied"))
    assert not is_auth_error(ConnectionResetError(104, "Connection reset by peer"))
    assert not is_auth_error(TimeoutError())


def test_hints_name_each_schemes_settings():
    assert "AWS_ACCESS_KEY_ID" in credentials_hint("s3")
    assert credentials_hint("gcs") == credentials_hint("gs")
    assert "GOOGLE_APPLICATION_CREDENTIALS" in credentials_hint("gs")
    assert "HF_TOKEN" in credentials_hint("hf")
    assert "access rights" in credentials_hint("https")


def test_message_is_one_safe_line():
    e = PermissionError("403 Forbidden\nsecond line\x1b[31m")
    msg = denied_message("s3://b/k\x1b", "s3", "reading the shard", e)
    assert "\n" not in msg and "\x1b" not in msg
    assert msg.startswith("s3://b/k") and "reading the shard: access denied" in msg
    assert "PermissionError: 403 Forbidden" in msg and "AWS_PROFILE" in msg
    assert first_line(ValueError()) == "ValueError"


def test_failure_head_is_shared_by_bundle_fetch_and_storage_inputs():
    """Both callers (bundle/remote.py, runtime/storage.py) say a network failure with the
    same one-line head and their own advice."""
    from quasar.bundle.remote import _network_error, parse_bundle_url
    from quasar.runtime.storage import storage_error

    e = ConnectionResetError(104, "Connection reset by peer\nmore\x1b[0m")
    head = "s3://b/k: reading the object failed (ConnectionResetError: [Errno 104] Connection " \
           "reset by peer); "
    bundle_msg = str(_network_error(parse_bundle_url("s3://b/k"), "reading the object", e))
    storage_msg = str(storage_error("s3://b/k", "reading the object", e))
    for msg in (bundle_msg, storage_msg):
        assert msg.startswith(head) and "\n" not in msg and "\x1b" not in msg
    assert "nothing was cached" in bundle_msg and "AWS_ENDPOINT_URL" in storage_msg
