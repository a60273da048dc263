"""The plan (what would be uploaded) and the upload: per folder one ``HfApi.create_repo(exist_ok=True)`` and one
``HfApi.upload_folder``, only when every folder passed validation and the Hub accepts every card."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..utils import first_line
from .folders import UPLOAD_IGNORE_PATTERNS, HubFolder, PublishError, check_name, hash_folder, version

logger = logging.getLogger(__name__)


class UploadError(PublishError):
    """An upload that failed part-way: which repo failed, which were uploaded before it, which were not."""

    def __init__(self, failed: str, uploaded: Sequence[str], pending: Sequence[str], reason: str) -> None:
        self.failed, self.uploaded, self.pending, self.reason = failed, list(uploaded), list(pending), reason
        done = ", ".join(self.uploaded) if self.uploaded else "none"
        rest = ", ".join(self.pending) if self.pending else "none"
        super().__init__(f"upload of {failed} failed ({reason}); already uploaded: {done}; not uploaded: {rest}. "
                         "The local folders are unchanged: fix the cause and re-run (files already on the Hub "
                         "are not sent again).")


class Secret:
    """A token that never shows: ``repr``/``str`` are masked; :meth:`reveal` gives the value to ``HfApi``.

    The token itself comes from huggingface_hub (``get_token()``: ``HF_TOKEN`` or ``hf auth login``); this only
    keeps it out of logs, messages and pickles.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret(***)" if self._value else "Secret(None)"

    __str__ = __repr__

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the token replaced by ``***``."""
        return text.replace(self._value, "***") if self._value else text

    def __reduce__(self) -> Any:  # never pickled with its value
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class UploadedRepo:
    repo_id: str
    repo_type: str
    url: str
    commit_url: str | None


def format_plan(folders: Sequence[HubFolder], namespace: str | None, *, private: bool = False,
                revision: str | None = None) -> str:
    """What would be uploaded: per repo its id, type, local folder, verdict, checks, problems and files."""
    lines = []
    visibility = "private" if private else "public (or the namespace's default)"
    for f in folders:
        status = "OK" if f.ok else ("FAILED" if f.errors else "NOT VALIDATED")
        lines.append(f"{f.repo_type:<7} {f.repo_id(namespace)}  [{status}]  {f.path}")
        lines += [f"    ok:      {check}" for check in f.checks]
        lines += [f"    warning: {warning}" for warning in f.warnings]
        lines += [f"    ERROR:   {error}" for error in f.errors]
        if f.path.is_dir():
            files = f.files()
            shown = files if len(files) <= 40 else files[:30]
            lines += [f"    {rel:<60} {_size(size):>10}" for rel, size in shown]
            if len(files) > len(shown):
                lines.append(f"    ... and {len(files) - len(shown)} more file(s)")
            lines.append(f"    {len(files)} file(s), {_size(sum(s for _, s in files))}")
    lines.append(f"visibility: {visibility}; branch: {revision or 'main'}")
    return "\n".join(lines)


def upload_folders(
    folders: Sequence[HubFolder],
    namespace: str,
    *,
    token: Secret | str | None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
    log: Callable[[str], None] | None = None,
) -> list[UploadedRepo]:
    """Upload validated folders: per folder one ``create_repo(exist_ok=True)`` and one ``upload_folder``.

    Refuses (``PublishError``, before any repo is created) unless every folder passed validation and the Hub
    accepts every card (``RepoCard.validate``, the check ``upload_folder`` would otherwise make one repo at a
    time). A failure part-way raises :class:`UploadError`, naming the repo that failed and those already
    uploaded; the local folders are never modified.

    Args:
        token: the Hub token (a :class:`Secret`, or a string, wrapped here); it is never logged.
        private: create new repos as private (an existing repo keeps its visibility).
        revision: a branch to commit to (created from main if missing); default main.
        api: an ``HfApi`` (default: ``HfApi(token=...)``).
    """
    from huggingface_hub import HfApi, constants

    secret = token if isinstance(token, Secret) else Secret(token)
    check_name(namespace, what="namespace")
    if not folders:
        raise PublishError("nothing to upload")
    bad = [f for f in folders if not f.ok]
    if bad:
        raise PublishError("refusing to upload: " + "; ".join(
            f"{f.repo_id(namespace)} {'failed validation' if f.errors else 'was not validated'}"
            + (f" ({f.errors[0]})" if f.errors else "") for f in bad))
    if not secret:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or do a dry run)")
    if constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set: uploading needs the Hub (unset it, or do a dry run)")
    _validate_cards_online(folders, namespace, secret)
    api = api if api is not None else HfApi(token=secret.reveal())
    log = log or (lambda message: logger.info("%s", message))
    done: list[UploadedRepo] = []
    for index, f in enumerate(folders):
        repo_id = f.repo_id(namespace)
        try:
            if hash_folder(f.path) != f.manifest:
                raise PublishError(f"{f.path} changed after it was validated; rebuild and validate it again")
            log(f"uploading {f.repo_type} {repo_id} ({len(f.manifest or {})} files) ...")
            url = api.create_repo(repo_id, repo_type=f.repo_type, private=True if private else None, exist_ok=True,
                                  space_sdk=f.space_sdk)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, repo_type=f.repo_type, exist_ok=True)
            info = api.upload_folder(
                folder_path=str(f.path), repo_id=repo_id, repo_type=f.repo_type, revision=revision,
                commit_message=commit_message or f"Publish {f.spec.words} with hf_isi {version()}",
                ignore_patterns=UPLOAD_IGNORE_PATTERNS)
        except Exception as err:
            logger.debug("upload of %s failed", repo_id, exc_info=True)
            reason = secret.scrub(f"{type(err).__name__}: {first_line(err, 300)}")
            pending = [g.repo_id(namespace) for g in folders[index + 1:]]
            raise UploadError(f"{f.repo_type} {repo_id}", [f"{d.repo_type} {d.repo_id}" for d in done], pending,
                              reason) from None
        done.append(UploadedRepo(repo_id, f.repo_type, str(url), getattr(info, "commit_url", None)))
        log(f"uploaded {f.repo_type} {repo_id}: {getattr(info, 'commit_url', None) or url}")
    return done


def _validate_cards_online(folders: Sequence[HubFolder], namespace: str, secret: Secret) -> None:
    """The Hub's own check of every card's YAML (``RepoCard.validate``), all before the first upload."""
    from huggingface_hub import RepoCard

    for f in folders:
        readme = f.path / "README.md"
        if not readme.is_file():
            continue
        try:
            RepoCard.load(readme).validate(repo_type=f.repo_type)
        except Exception as err:
            logger.debug("card validation of %s failed", f.path, exc_info=True)
            raise PublishError(f"the Hub does not accept the card of {f.repo_type} {f.repo_id(namespace)} "
                               f"({secret.scrub(f'{type(err).__name__}: {first_line(err, 300)}')}); "
                               "nothing was uploaded") from None


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
