"""``quasar push BUNDLE URL``: publish a verified bundle with its model card.

Export once on one machine, push, and every other machine scores with ``quasar-iqa[cpu]`` and
the URL (no torch). The bundle is verified first (``load_bundle(verify=True)``: a tampered or
incomplete bundle is never published) and a randomly initialised one is refused unless asked
for. Uploads go through the stores' own clients:

* ``hf://ORG/REPO``: huggingface_hub, one commit with every file and README.md
  (``create_repo(exist_ok)``, ``--revision`` a branch created from main when missing,
  ``--private`` for a new repository, ``--create-pr`` to open a pull request instead);
* ``s3://`` / ``gs://`` / ``https://``: fsspec, data files first, ``bundle.json`` last (it
  pins every other file's sha256, so a reader during the upload gets a verification error and
  a retry, never a mixed bundle); an existing bundle there is replaced only with
  ``--overwrite``.

Credentials and endpoints are the libraries' own settings (``HF_TOKEN``, ``HF_ENDPOINT``,
``AWS_*`` / ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``): docs/remote.md.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

from quasar.constants import BUNDLE_JSON
from quasar.errors import BundleError, RemoteBundleError, UsageError, install_hint
from quasar.text import safe_text

from .card import model_card
from .io import Bundle, load_bundle
from .remote import BundleURL, _missing, _network_error, parse_bundle_url

log = logging.getLogger(__name__)
README = "README.md"


def push(bundle: str, url: str, revision: Optional[str] = None, private: bool = False,
         create_pr: bool = False, overwrite: bool = False, allow_random_init: bool = False,
         message: Optional[str] = None, quiet: bool = False) -> Dict[str, Any]:
    """Push the bundle directory ``bundle`` to ``url``; prints where it went and how to
    score with it; returns ``{"url", "commit", "pr_url"}``."""
    b = _verified(bundle, allow_random_init)
    u = parse_bundle_url(url)
    if u.scheme == "hf":
        if u.revision:
            raise UsageError(f"{safe_text(url)}: give the branch with --revision, not @REV")
        result = _push_hub(b, u, revision=revision, private=private, create_pr=create_pr,
                           message=message or f"Upload QUASAR bundle {b.model}")
    else:
        bad = [f for f, v in (("--revision", revision), ("--private", private),
                              ("--create-pr", create_pr)) if v]
        if bad:
            raise UsageError(f"{', '.join(bad)}: Hub options; {u.scheme}:// has no revisions, "
                             "visibility or pull requests (use bucket policies and folders)")
        result = _push_fsspec(b, u, overwrite=overwrite)
    if not quiet:
        where = result["url"]
        print(f"pushed {b.model} ({len(b.manifest.files) + 2} files) to {where}"
              + (f" (commit {result['commit']})" if result.get("commit") else ""))
        if result.get("pr_url"):
            print(f"pull request: {result['pr_url']}")
        print(f"score with it:  {install_hint('cpu,' + u.extra)} && "
              f"quasar score photos/ --bundle {where} -o scores.csv")
    return result


def _verified(path: str, allow_random_init: bool) -> Bundle:
    try:
        b = load_bundle(path, verify=True)
    except BundleError as exc:
        raise BundleError(f"{exc} [not pushed: only a bundle that verifies is published]") \
            from exc
    if b.random_init and not allow_random_init:
        raise BundleError(f"{safe_text(str(path))}: holds RANDOMLY INITIALISED weights (scores "
                          "carry no meaning); not pushed - pass --allow-random-init to publish "
                          "it anyway (for tests), its model card says so")
    return b


def _files(b: Bundle) -> List[str]:
    """Upload order: data files, then bundle.json (the file that pins all the others)."""
    return sorted(b.manifest.files) + [BUNDLE_JSON]


def _push_hub(b: Bundle, u: BundleURL, *, revision: Optional[str], private: bool,
              create_pr: bool, message: str) -> Dict[str, Any]:
    try:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    except ImportError as exc:
        raise _missing(u, "huggingface_hub", exc) from exc
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    shown = f"hf://{u.location}" + (f"@{revision}" if revision else "")
    card = model_card(b, shown).encode("utf-8")
    ops = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(b.path / n))
           for n in _files(b)]
    ops.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=card))
    try:
        api.create_repo(u.location, private=private or None, exist_ok=True)
        if revision:
            api.create_branch(u.location, branch=revision, exist_ok=True)
        info = api.model_info(u.location, revision=revision or "main")
        if private and not getattr(info, "private", True):
            log.warning("hf://%s exists and is public: --private applies to new repositories "
                        "only; it stays public (change it in its settings)", u.location)
        ops += [CommitOperationDelete(path_in_repo=n)
                for n in _stale(info, {op.path_in_repo for op in ops})]
        info = api.create_commit(u.location, operations=ops, commit_message=message,
                                 revision=revision, create_pr=create_pr)
    except Exception as exc:  # noqa: BLE001 - the client's errors, mapped
        raise _network_error(u, "pushing the bundle", exc) from exc
    return {"url": shown, "commit": getattr(info, "oid", None),
            "pr_url": getattr(info, "pr_url", None)}


def _stale(info: Any, keep: set) -> List[str]:
    """Files of the branch that the new bundle does not have (an older bundle's variant...):
    deleted in the same commit, so the repository holds exactly the bundle and its card."""
    names = [s.rfilename for s in (getattr(info, "siblings", None) or [])]
    return sorted(n for n in names if n not in keep and n != ".gitattributes")


def _push_fsspec(b: Bundle, u: BundleURL, *, overwrite: bool) -> Dict[str, Any]:
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(u.location, skip_instance_cache=True)
    except ImportError as exc:
        raise _missing(u, {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(u.scheme, "fsspec"),
                       exc) from exc
    root = root.rstrip("/")
    try:
        if fs.exists(f"{root}/{BUNDLE_JSON}") and not overwrite:
            raise RemoteBundleError(f"{safe_text(u.url)}: a bundle is already there; pass "
                                    "--overwrite to replace it, or push to another folder")
        names = _files(b)
        for n in names[:-1]:
            fs.put_file(str(b.path / n), f"{root}/{n}")
        with fs.open(f"{root}/{README}", "wb") as f:
            f.write(model_card(b, u.location).encode("utf-8"))
        fs.put_file(str(b.path / BUNDLE_JSON), f"{root}/{BUNDLE_JSON}")
    except RemoteBundleError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _network_error(u, "pushing the bundle", exc) from exc
    return {"url": u.location, "commit": None, "pr_url": None}


__all__ = ["push"]
