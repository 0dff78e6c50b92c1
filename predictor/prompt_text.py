"""Turns a request's prompt (text, bytes or chat messages) into the text the features read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from predictor.errors import PredictorInputError

#: A 1 MB prompt must stay fast: features read the head and the tail (the instruction
#: usually opens or closes a prompt), plus the full length, which costs nothing.
DEFAULT_MAX_CHARS = 4000
HEAD_SHARE = 0.75


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, (str, bytes, bytearray)):
        return _as_str(content)
    if isinstance(content, Sequence):
        # OpenAI content parts: keep the text parts in order, skip images/audio.
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type", "text") == "text":
                    parts.append(_as_str(part.get("text", "")))
            elif isinstance(part, (str, bytes, bytearray)):
                parts.append(_as_str(part))
            else:
                raise PredictorInputError("message content parts must be objects or strings")
        return "\n".join(parts)
    raise PredictorInputError("message content must be a string or a list of parts")


def _as_str(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise PredictorInputError(f"prompt text must be a string, got {type(value).__name__}")
    return value


def render_prompt(prompt_or_messages) -> str:
    """Deterministic text of a prompt.

    A plain string (or UTF-8 bytes) is used as is. Chat messages are joined in
    order, one block per message; user turns are verbatim (CASTILLO prompts are
    single user turns), other roles carry a ``[role]`` tag.
    """
    if isinstance(prompt_or_messages, (str, bytes, bytearray)):
        return _as_str(prompt_or_messages)
    if isinstance(prompt_or_messages, Mapping):
        prompt_or_messages = [prompt_or_messages]
    if not isinstance(prompt_or_messages, Sequence):
        raise PredictorInputError("prompt must be a string or a list of chat messages")
    blocks = []
    for message in prompt_or_messages:
        if not isinstance(message, Mapping):
            raise PredictorInputError("each chat message must be an object with role and content")
        role = str(message.get("role", "user"))
        text = _content_text(message.get("content"))
        blocks.append(text if role == "user" else f"[{role}] {text}")
    return "\n\n".join(blocks)


def clip_text(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Head and tail of a long text, valid UTF-8 (lone surrogates replaced)."""
    if len(text) > max_chars:
        head = int(max_chars * HEAD_SHARE)
        text = text[:head] + "\n" + text[len(text) - (max_chars - head) :]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def feature_text(prompt_or_messages) -> str:
    """The text the length features read: what the answer responds to.

    A plain string is used as is. For chat messages: the system prompt(s), which may
    ask for a length or a register, then the last user turn, which the answer
    answers. Earlier turns and assistant replies are left out: CASTILLO, the training
    data, holds single user turns only, so a long history would read as a long prompt
    (a different kind of request) rather than as context.
    """
    if isinstance(prompt_or_messages, (str, bytes, bytearray, Mapping)):
        return render_prompt(prompt_or_messages)
    render_prompt(prompt_or_messages)  # the same validation and errors as rendering
    system, last_user = [], None
    for message in prompt_or_messages:
        role = str(message.get("role", "user"))
        if role in ("system", "developer"):
            system.append(_content_text(message.get("content")))
        elif role == "user":
            last_user = _content_text(message.get("content"))
    if last_user is None:  # no user turn: keep everything rather than nothing
        return render_prompt(prompt_or_messages)
    return "\n\n".join([*system, last_user]) if system else last_user
