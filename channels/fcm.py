"""Push through Firebase Cloud Messaging (HTTP v1), using ``firebase-admin`` (pinned 7.7.0)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import firebase_admin
import requests.adapters
from firebase_admin import credentials, exceptions, messaging
from google.auth import exceptions as auth_exceptions

from channels.base import (
    Message,
    Outcome,
    PermanentProviderError,
    ProviderError,
    PushContent,
    SendResult,
    TransientProviderError,
    parse_retry_after,
    unpack,
)
from channels.batch import settle
from core.settings import Settings
from core.types import Channel

log = logging.getLogger(__name__)

PROVIDER = "fcm"
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TOKENS_PER_CALL = 500  # send_each's limit

# Failures that mean "this token is dead": the caller removes it from the subscriber.
# UnregisteredError is a NotFoundError, so check it first to report the precise code.
_INVALID_TOKEN_ERRORS: tuple[tuple[type[exceptions.FirebaseError], str], ...] = (
    (messaging.UnregisteredError, "UNREGISTERED"),
    (exceptions.NotFoundError, "NOT_FOUND"),
)
# INVALID_ARGUMENT is mostly a malformed message (e.g. data over 4 KB), which every token
# would refuse alike: it fails the delivery and says nothing about the token, kept as is.
MALFORMED = "INVALID_ARGUMENT"
# Failures that a later attempt can fix.
_TRANSIENT_ERRORS: tuple[type[exceptions.FirebaseError], ...] = (
    messaging.QuotaExceededError,
    exceptions.ResourceExhaustedError,
    exceptions.UnavailableError,
    exceptions.InternalError,
    exceptions.DeadlineExceededError,
    exceptions.UnknownError,
    exceptions.AbortedError,
    exceptions.CancelledError,
)


def _point_messaging_service(app: firebase_admin.App, base_url: str, project_id: str) -> None:
    """Point firebase-admin's messaging service at ``base_url`` and turn off its retries.

    The SDK has no public option for either, so this touches private attributes of
    ``messaging._MessagingService`` (checked against firebase-admin 7.7.0, which is pinned):

    * ``_fcm_url`` is the send endpoint (lets tests use a local fake);
    * its requests session mounts urllib3 retries (4 x on 500/503 with backoff, and a read
      retry that can duplicate a POST). Temporal owns retries, so mount a no-retry adapter
      for our base URL (the longest mount prefix wins in requests).
    """
    service = messaging._get_messaging_service(app)
    service._fcm_url = f"{base_url}/v1/projects/{project_id}/messages:send"
    no_retry = requests.adapters.HTTPAdapter(
        pool_connections=10, pool_maxsize=MAX_TOKENS_PER_CALL, max_retries=0
    )
    service._client.session.mount(base_url + "/", no_retry)


class FcmAdapter:
    channel = Channel.PUSH
    provider = PROVIDER
    max_batch = MAX_TOKENS_PER_CALL

    def __init__(self, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if settings.fcm_credentials_file is None:
            raise ValueError("FcmAdapter needs HERALD_FCM_CREDENTIALS_FILE")
        cred = credentials.Certificate(str(settings.fcm_credentials_file))
        # A named app per adapter: several can coexist (tests, reloads) without clashing
        # with the default app or with each other.
        self._app = firebase_admin.initialize_app(
            cred,
            options={"httpTimeout": timeout},
            name=f"herald-{uuid.uuid4().hex[:12]}",
        )
        project_id = self._app.project_id
        if not project_id:
            raise ValueError("the FCM service account file has no project_id")
        _point_messaging_service(self._app, settings.fcm_base_url.rstrip("/"), project_id)

    def close(self) -> None:
        """Release the firebase app (its name and HTTP sessions)."""
        firebase_admin.delete_app(self._app)

    def send(self, message: Message) -> SendResult:
        tokens, fcm_messages = _prepare(message)
        try:
            batch = messaging.send_each(fcm_messages, app=self._app)
        except exceptions.FirebaseError as exc:
            # send_each turns anything escaping a worker (e.g. failing to fetch an OAuth
            # token) into UnknownError with the original as its cause.
            raise _classify_batch_failure(exc) from exc
        outcome = _outcome(message, tokens, batch.responses)
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    def plan_batch(self, messages: Sequence[Message]) -> tuple[list[Call], dict[int, Outcome]]:
        """The ``send_each`` calls for ``messages``, and the messages that cannot be sent.

        One FCM message per token; a message's tokens never straddle two calls, so each
        call's answer settles its messages.
        """
        calls: list[Call] = []
        rejected: dict[int, Outcome] = {}
        size = 0
        for index, message in enumerate(messages):
            try:
                tokens, fcm_messages = _prepare(message)
            except PermanentProviderError as exc:
                rejected[index] = exc
                continue
            if not calls or size + len(tokens) > MAX_TOKENS_PER_CALL:
                calls.append(Call([], []))
                size = 0
            calls[-1].members.append((index, tokens))
            calls[-1].fcm_messages.extend(fcm_messages)
            size += len(tokens)
        return calls, rejected

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """``send_each`` per <= 500 tokens; a message is sent if any of its tokens went out."""
        calls, outcomes = self.plan_batch(messages)
        for number, call in enumerate(calls):
            try:
                batch = messaging.send_each(call.fcm_messages, app=self._app)
            except exceptions.FirebaseError as exc:
                # Credentials or the network: the calls after this one would fail alike.
                error = _classify_batch_failure(exc)
                for later in calls[number:]:
                    outcomes.update((index, error) for index, _ in later.members)
                break
            responses = iter(batch.responses)
            for index, tokens in call.members:
                answers = [next(responses) for _ in tokens]
                outcomes[index] = _outcome(messages[index], tokens, answers)
        return settle([outcomes[i] for i in range(len(messages))])


@dataclass(frozen=True)
class Call:
    """One ``send_each`` call: (message index, its tokens) and the FCM messages, in order."""

    members: list[tuple[int, list[str]]]
    fcm_messages: list[messaging.Message]


def _prepare(message: Message) -> tuple[list[str], list[messaging.Message]]:
    """The message's tokens (de-duplicated, order kept) and one FCM message per token."""
    content = unpack(message, PushContent, provider=PROVIDER, one_recipient=False)
    tokens = list(dict.fromkeys(message.to))
    if not tokens:
        raise PermanentProviderError(
            "no push tokens", provider=PROVIDER, code="no_tokens", recipient=True
        )
    if len(tokens) > MAX_TOKENS_PER_CALL:
        raise PermanentProviderError(
            f"{len(tokens)} tokens exceed FCM's {MAX_TOKENS_PER_CALL} per call",
            provider=PROVIDER,
            code="too_many_tokens",
        )
    data = {**content.data, "herald_delivery_id": message.delivery_id}
    notification = messaging.Notification(title=content.title, body=content.body)
    return tokens, [_token_message(token, notification, data) for token in tokens]


def _outcome(
    message: Message, tokens: list[str], responses: Sequence[messaging.SendResponse]
) -> Outcome:
    """Sent if any token went out (dead ones listed), else why all of them failed."""
    sent: list[str] = []
    invalid: list[str] = []
    failures: list[tuple[str, exceptions.FirebaseError]] = []
    for token, resp in zip(tokens, responses, strict=True):
        if resp.success:
            sent.append(resp.message_id)
            continue
        error = resp.exception
        failures.append((token, error))
        if _invalid_token_code(error) is not None:
            invalid.append(token)

    if sent:
        if failures:
            log.warning(
                "fcm delivery %s: %d of %d tokens failed (%d invalid)",
                message.delivery_id,
                len(failures),
                len(tokens),
                len(invalid),
            )
        return SendResult(
            provider=PROVIDER,
            provider_message_id=",".join(sent),
            invalid_tokens=tuple(invalid),
        )
    return _classify_all_failed(failures, tuple(invalid))


def _token_message(
    token: str, notification: messaging.Notification, data: dict[str, str]
) -> messaging.Message:
    msg = messaging.Message(notification=notification, data=data)
    # Message(token=...) warns "deprecated, use fid"; but our addresses are registration
    # tokens, not installation ids. Setting the (still encoded) attribute afterwards avoids
    # the warning without touching the process-wide, thread-unsafe warnings filters.
    msg.token = token
    return msg


def _invalid_token_code(exc: exceptions.FirebaseError) -> str | None:
    for exc_type, code in _INVALID_TOKEN_ERRORS:
        if isinstance(exc, exc_type):
            return code
    return None


def _retry_after(exc: exceptions.FirebaseError) -> float | None:
    response = exc.http_response
    if response is None:
        return None
    return parse_retry_after(response.headers.get("Retry-After"))


def _describe(exc: exceptions.FirebaseError) -> str:
    return f"{exc.code}: {exc}"


def _classify_all_failed(
    failures: list[tuple[str, exceptions.FirebaseError]], invalid: tuple[str, ...]
) -> TransientProviderError | PermanentProviderError:
    errors = [exc for _, exc in failures]
    summary = "; ".join(sorted({_describe(exc) for exc in errors}))[:500]
    if any(isinstance(exc, exceptions.InvalidArgumentError) for exc in errors):
        # A retry cannot fix the message; the tokens were not at fault, only dead ones go.
        return PermanentProviderError(
            f"FCM refused the message as malformed: {summary}",
            provider=PROVIDER,
            code=MALFORMED,
            invalid_tokens=invalid,
        )
    if len(invalid) == len(failures):
        codes = [_invalid_token_code(exc) for exc in errors]
        code = "UNREGISTERED" if "UNREGISTERED" in codes else "NOT_FOUND"
        return PermanentProviderError(
            f"all {len(failures)} token(s) rejected: {summary}",
            provider=PROVIDER,
            code=code,
            invalid_tokens=invalid,
            recipient=True,
        )
    transient = [exc for exc in errors if isinstance(exc, _TRANSIENT_ERRORS)]
    if transient:
        waits = [w for w in (_retry_after(exc) for exc in transient) if w is not None]
        return TransientProviderError(
            f"all {len(failures)} token(s) failed: {summary}",
            provider=PROVIDER,
            code=_fcm_code(transient[0]),
            retry_after=max(waits) if waits else None,
            invalid_tokens=invalid,
        )
    # Credentials, sender-id mismatch, permission: a retry would fail the same way.
    first = next(exc for exc in errors if _invalid_token_code(exc) is None)
    return PermanentProviderError(
        f"all {len(failures)} token(s) failed: {summary}",
        provider=PROVIDER,
        code=_fcm_code(first),
        invalid_tokens=invalid,
    )


def _fcm_code(exc: exceptions.FirebaseError) -> str:
    """The FCM error code (e.g. QUOTA_EXCEEDED) where the SDK has a class for it."""
    if isinstance(exc, messaging.QuotaExceededError):
        return "QUOTA_EXCEEDED"
    if isinstance(exc, messaging.SenderIdMismatchError):
        return "SENDER_ID_MISMATCH"
    if isinstance(exc, messaging.ThirdPartyAuthError):
        return "THIRD_PARTY_AUTH_ERROR"
    return str(exc.code)


def _classify_batch_failure(
    exc: exceptions.FirebaseError,
) -> TransientProviderError | PermanentProviderError:
    cause = exc.cause
    if isinstance(cause, auth_exceptions.RefreshError) and not cause.retryable:
        return PermanentProviderError(
            f"could not get an OAuth token for FCM: {cause}", provider=PROVIDER, code="auth"
        )
    return TransientProviderError(
        f"FCM call failed: {exc}", provider=PROVIDER, code=str(exc.code or "UNKNOWN")
    )
