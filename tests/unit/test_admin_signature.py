"""Signed admin calls: the Ansible signer (filter admin_signature) and the chat's verifier
(chat/adminauth.py) agree with each other and with HMAC-SHA256 computed here, independently."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.canarychat.platform.plugins.filter import (
    admin_signature as signer,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import adminauth
from chat.config import Config

# The shared vector: one request, its string to sign spelled out, the HMAC computed with the
# standard library (and pinned as hex so a change of the scheme on both sides still fails).
TOKEN = "vector-token-\u00e9"  # non-ASCII: the key is the token's UTF-8
METHOD, PATH = "POST", "/api/admin/drain"
BODY = '{"color": "green"}'
T, NONCE = 1796572800, "0123456789abcdef0123456789abcdef"
STRING_TO_SIGN = (b"POST\n/api/admin/drain\n1796572800\n0123456789abcdef0123456789abcdef\n"
                  + hashlib.sha256(BODY.encode()).hexdigest().encode())
EXPECTED_SIG = hmac.new(TOKEN.encode("utf-8"), STRING_TO_SIGN, hashlib.sha256).hexdigest()
# pinned value computed a third way: printf ... | openssl dgst -sha256 -hmac <token>
PINNED_SIG = "7dc337c87811f16262cea65d7d3b34ca243a15e67af9722114ee8b507303918c"
EXPECTED_HEADER = f"Canary-HMAC-SHA256 t={T},n={NONCE},s={EXPECTED_SIG}"


def test_the_vector_is_pinned() -> None:
    assert EXPECTED_SIG == PINNED_SIG


def test_filter_and_chat_sign_the_vector_identically() -> None:
    assert signer.admin_signature(TOKEN, METHOD, PATH, BODY, timestamp=T,
                                  nonce=NONCE) == EXPECTED_HEADER
    assert adminauth.string_to_sign(METHOD, PATH, T, NONCE, BODY.encode()) == STRING_TO_SIGN
    assert adminauth.authorization(TOKEN, METHOD, PATH, BODY.encode(), timestamp=T,
                                   nonce=NONCE) == EXPECTED_HEADER
    # the filter's method is case-insensitive as HTTP's is not: it signs upper case
    assert signer.admin_signature(TOKEN, "post", PATH, BODY, timestamp=T,
                                  nonce=NONCE) == EXPECTED_HEADER


def test_chat_accepts_what_the_filter_signs_now() -> None:
    header = signer.admin_signature(TOKEN, METHOD, PATH, BODY)
    signed = adminauth.verify(TOKEN, header, METHOD, PATH, BODY.encode(), skew=60)
    assert len(signed.nonce) == 32 and signed.signature in header
    # two calls never share a nonce
    assert adminauth.parse(signer.admin_signature(TOKEN, METHOD, PATH, BODY)).nonce \
        != signed.nonce


def test_chat_verifies_the_vector_within_the_window_only() -> None:
    def check(now: float, skew: float = 60) -> adminauth.Signed:
        return adminauth.verify(TOKEN, EXPECTED_HEADER, METHOD, PATH, BODY.encode(),
                                skew=skew, now=now)

    assert check(T).nonce == NONCE
    assert check(T - 60).timestamp == T and check(T + 60).timestamp == T
    for now in (T - 61, T + 61, T + 3600, 0):
        with pytest.raises(adminauth.SignatureError) as e:
            check(now)
        assert e.value.reason == "stale timestamp"
    assert check(T + 100, skew=120).timestamp == T


@pytest.mark.parametrize("change", ["token", "method", "path", "body", "nonce", "time"])
def test_any_change_to_a_signed_part_breaks_the_signature(change: str) -> None:
    token, method, path, body = TOKEN, METHOD, PATH, BODY.encode()
    header = EXPECTED_HEADER
    if change == "token":
        token = TOKEN + "x"
    elif change == "method":
        method = "PUT"
    elif change == "path":
        path = "/api/admin/undrain"
    elif change == "body":
        body = b'{"color": "blue"}'
    elif change == "nonce":
        header = header.replace(NONCE, NONCE[::-1])
    else:
        header = header.replace(f"t={T}", f"t={T + 1}")
    with pytest.raises(adminauth.SignatureError) as e:
        adminauth.verify(token, header, method, path, body, skew=60, now=T)
    assert e.value.reason == "bad signature"


@pytest.mark.parametrize("header", [
    "", "Canary-HMAC-SHA256", "Canary-HMAC-SHA256 ", "Bearer x",
    f"Canary-HMAC-SHA256 n={NONCE},t={T},s={EXPECTED_SIG}",  # order is fixed
    f"Canary-HMAC-SHA256 t={T},n={NONCE}",  # no signature
    f"Canary-HMAC-SHA256 t={T},n=short,s={EXPECTED_SIG}",
    f"Canary-HMAC-SHA256 t=-{T},n={NONCE},s={EXPECTED_SIG}",
    f"Canary-HMAC-SHA256 t={T}0000000,n={NONCE},s={EXPECTED_SIG}",  # 17 digits
    f"Canary-HMAC-SHA256 t={T},n={NONCE},s={EXPECTED_SIG.upper()}",
    f"Canary-HMAC-SHA256 t={T},n={NONCE},s={EXPECTED_SIG}00",
    f"Canary-HMAC-SHA256 t={T},n={NONCE},s={EXPECTED_SIG},x=1",
    f"Canary-HMAC-SHA256 t=\u0661\u0662,n={NONCE},s={EXPECTED_SIG}",  # Arabic-Indic digits
    f"Canary-HMAC-SHA256 t={T},n={NONCE[:-1]}\u00e9,s={EXPECTED_SIG}",
    f"Canary-HMAC-SHA256 t={T},n={NONCE},s={EXPECTED_SIG[:-1]}\udcff",  # a raw 0xff byte
    "Canary-HMAC-SHA256 \x00",
])
def test_malformed_headers_are_refused_as_malformed(header: str) -> None:
    with pytest.raises(adminauth.SignatureError) as e:
        adminauth.verify(TOKEN, header, METHOD, PATH, BODY.encode(), skew=60, now=T)
    assert e.value.reason == "malformed"


def test_scheme_name_is_case_insensitive_and_a_space_after_commas_is_allowed() -> None:
    header = f"canary-hmac-sha256 t={T}, n={NONCE}, s={EXPECTED_SIG}"
    assert adminauth.is_signed(header)
    assert adminauth.verify(TOKEN, header, METHOD, PATH, BODY.encode(), skew=60,
                            now=T).nonce == NONCE


def test_nonces_are_remembered_for_the_whole_acceptance_window() -> None:
    # t is accepted from t - skew to t + skew of server time: a nonce first seen at the
    # earliest moment must still be known at the latest
    assert adminauth.nonce_ttl(60) == 120
    assert adminauth.nonce_ttl(1.5) == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"body": {"color": "green"}}, "must be a string"),
    ({"path": "api/admin/drain"}, "path must start with /"),
    ({"path": "/api/admin/drain?x=1"}, "no query"),
    ({"nonce": "short"}, "nonce must be"),
    ({"token": ""}, "token is empty"),
])
def test_filter_refuses_what_it_cannot_sign_faithfully(kwargs: dict[str, object],
                                                       message: str) -> None:
    args: dict[str, object] = {"token": TOKEN, "method": METHOD, "path": PATH, "body": BODY}
    args.update(kwargs)
    with pytest.raises(AnsibleFilterError, match=message):
        signer.admin_signature(args.pop("token"), args.pop("method"), args.pop("path"),
                               **args)


def test_filter_is_registered_under_its_name() -> None:
    assert signer.FilterModule().filters() == {"admin_signature": signer.admin_signature}


def test_config_knobs() -> None:
    assert Config.from_env({}).admin_bearer is True
    assert Config.from_env({}).admin_skew == 60.0
    assert Config.from_env({"CHAT_ADMIN_BEARER": "0"}).admin_bearer is False
    assert Config.from_env({"CHAT_ADMIN_SKEW_SECONDS": "30"}).admin_skew == 30.0
    with pytest.raises(ValueError):
        Config.from_env({"CHAT_ADMIN_BEARER": "maybe"})
    with pytest.raises(ValueError):
        Config.from_env({"CHAT_ADMIN_SKEW_SECONDS": "0"})


# Any header text, including what Sanic makes of non-UTF-8 bytes (surrogateescape), is either
# a valid signature or a SignatureError: never another exception (a 500 in the chat).
_header_text = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.builds(lambda t, n, s, tail: f"Canary-HMAC-SHA256 t={t},n={n},s={s}{tail}",
              st.text(max_size=14), st.text(max_size=70), st.text(max_size=70),
              st.text(max_size=3)),
)


@settings(max_examples=200, deadline=None)
@given(header=_header_text)
def test_verify_raises_only_signature_errors(header: str) -> None:
    try:
        adminauth.verify(TOKEN, header, METHOD, PATH, BODY.encode(), skew=60, now=T)
    except adminauth.SignatureError as e:
        assert e.reason in ("malformed", "stale timestamp", "bad signature")
    else:
        raise AssertionError(f"accepted a header it did not sign: {header!r}")
