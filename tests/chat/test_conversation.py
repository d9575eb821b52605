"""Chat template and history: whole turns, each user turn once, the whole answer, oldest dropped first."""

import pytest

from chat.errors import PromptTooLongError
from chat.generate import ChatSession, Done, Piece
from chat.template import Conversation, apply_chat_template, message_ids


def ids_of(tok, *parts):
    """Concatenate special names (str starting with '<' or '[') and (role, text) message tuples."""
    out = []
    for part in parts:
        out += [tok.special_id(part)] if isinstance(part, str) else message_ids(tok, *part)
    return out


def test_template_layout(tokenizer):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "world"},
        {"role": "user", "content": "你好"},
    ]
    expected = ids_of(
        tokenizer,
        "[gMASK]",
        "<sop>",
        ("system", "be brief"),
        ("user", "hello"),
        ("assistant", "world"),
        ("user", "你好"),
    )
    assert apply_chat_template(tokenizer, messages) == expected + [tokenizer.special_id("<|assistant|>")]
    assert apply_chat_template(tokenizer, messages, add_generation_prompt=False) == expected
    assert message_ids(tokenizer, "user", "hello") == [
        tokenizer.special_id("<|user|>"),
        198,
    ] + tokenizer.encode("hello")


def test_history_holds_each_turn_once_with_the_whole_answer(tokenizer):
    conversation = Conversation(tokenizer, seqlen=128, reserve=32)
    conversation.commit("first question", "a long\nanswer", tokenizer.encode("\na long\nanswer"))
    prompt = conversation.prompt("second")
    assistant = tokenizer.special_id("<|assistant|>")
    assert prompt == (
        ids_of(tokenizer, "[gMASK]", "<sop>", ("user", "first question"), "<|assistant|>")
        + tokenizer.encode("\na long\nanswer")
        + ids_of(tokenizer, ("user", "second"), "<|assistant|>")
    )
    assert prompt.count(tokenizer.special_id("<|user|>")) == 2 and prompt.count(assistant) == 2


def test_oldest_turns_are_dropped_first_to_fit_the_budget(tokenizer):
    conversation = Conversation(tokenizer, seqlen=64, reserve=16)
    for n in range(6):
        conversation.commit(
            f"question {n} " + "box " * 3, f"answer {n}", tokenizer.encode(f"answer {n} " + "edge " * 3)
        )
    prompt = conversation.prompt("now")
    assert len(prompt) <= 48
    text = tokenizer.decode(prompt)
    kept = [n for n in range(6) if f"question {n}" in text]
    assert kept == list(range(6 - len(kept), 6)) and 0 < len(kept) < 6  # a suffix of whole turns
    assert all(f"answer {n}" in text for n in kept)


def test_a_message_that_cannot_fit_is_refused(tokenizer):
    conversation = Conversation(tokenizer, seqlen=64, reserve=16)
    with pytest.raises(PromptTooLongError, match="at most 46 fit"):
        conversation.prompt("box " * 60)


def test_session_commits_the_finished_turn_once(model, tokenizer):
    session = ChatSession(model, tokenizer)
    events = list(session.chat("tell me about the box", max_new_tokens=6))
    done = events[-1]
    assert isinstance(done, Done) and done.tokens == 6 and done.stop == "length"
    assert "".join(e.text for e in events if isinstance(e, Piece)) == done.text
    assert [(t.user_text, t.answer_ids) for t in session.conversation.turns] == [
        ("tell me about the box", done.token_ids)
    ]
    second = session.conversation.prompt("next")
    assert second.count(tokenizer.special_id("<|user|>")) == 2
    session.reset()
    assert session.conversation.turns == [] and session.stats()["answers"] == 1
