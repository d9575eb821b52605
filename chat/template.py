"""GLM-4's chat template and a multi-turn conversation kept within the model's SEQLEN.

Template (tokenization_chatglm.py `apply_chat_template`): `[gMASK]<sop>`, then per message the role token
`<|role|>`, encode("\\n") and encode(content) — encoded separately, as GLM-4 does — and finally the generation
prompt `<|assistant|>`. For "你好" that is [151331, 151333, 151336, 198, 109377, 151337] with glm-4-9b's
tokenizer.

History: a finished exchange is stored once, as a whole turn: the user's text and the assistant's complete
answer, as the very ids the model generated (so the next prompt shows the model what it actually said).
When a prompt would not leave `reserve` tokens of SEQLEN for the answer, the oldest turns are dropped first;
if the new message alone does not fit, PromptTooLongError. (The seed appends the user turn twice and stores
only the last streamed piece of the answer.)
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence

from .errors import PromptTooLongError
from .tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "observation")


def message_ids(tokenizer: Tokenizer, role: str, content: str) -> List[int]:
    """`<|role|>` + encode("\\n") + encode(content)."""
    if role not in ROLES:
        raise ValueError("unknown role %r; expected one of %s" % (role, ROLES))
    return [tokenizer.special_id("<|%s|>" % role)] + tokenizer.encode("\n") + tokenizer.encode(content)


def prefix_ids(tokenizer: Tokenizer) -> List[int]:
    return [tokenizer.special_id("[gMASK]"), tokenizer.special_id("<sop>")]


def apply_chat_template(
    tokenizer: Tokenizer, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = True
) -> List[int]:
    """GLM-4's template over `[{"role": ..., "content": ...}, ...]` (a flat list, not a list of lists)."""
    ids = prefix_ids(tokenizer)
    for message in messages:
        ids += message_ids(tokenizer, message["role"], message["content"])
    if add_generation_prompt:
        ids.append(tokenizer.special_id("<|assistant|>"))
    return ids


class Turn(NamedTuple):
    """One finished exchange: the user's text and ids, the whole answer's text and generated ids."""

    user_text: str
    user_ids: List[int]
    answer_text: str
    answer_ids: List[int]


class Conversation:
    """Whole turns of history plus the prompt for the next message, within `seqlen - reserve` tokens."""

    def __init__(self, tokenizer: Tokenizer, seqlen: int, reserve: int) -> None:
        if not 0 < reserve < seqlen:
            raise ValueError("reserve must be in (0, %d), got %d" % (seqlen, reserve))
        self.tokenizer = tokenizer
        self.seqlen = seqlen
        self.reserve = reserve
        self.budget = seqlen - reserve
        self.turns = []  # type: List[Turn]

    def _turn_ids(self, turn: Turn) -> List[int]:
        return turn.user_ids + [self.tokenizer.special_id("<|assistant|>")] + turn.answer_ids

    def prompt(self, user_text: str) -> List[int]:
        """Ids to prefill for `user_text` with as many of the newest whole turns as fit the budget.

        Raises:
            PromptTooLongError: the new message alone exceeds the budget.
        """
        head = prefix_ids(self.tokenizer)
        new = message_ids(self.tokenizer, "user", user_text) + [self.tokenizer.special_id("<|assistant|>")]
        if len(head) + len(new) > self.budget:
            raise PromptTooLongError(
                "the message is %d tokens; at most %d fit (SEQLEN %d minus %d reserved for the answer)"
                % (len(new), self.budget - len(head), self.seqlen, self.reserve)
            )
        kept = []  # type: List[List[int]]
        used = len(head) + len(new)
        for turn in reversed(self.turns):
            ids = self._turn_ids(turn)
            if used + len(ids) > self.budget:
                break
            kept.insert(0, ids)
            used += len(ids)
        return head + [i for ids in kept for i in ids] + new

    def commit(self, user_text: str, answer_text: str, answer_ids: Sequence[int]) -> None:
        """Store a finished exchange once, with the whole answer."""
        user_ids = message_ids(self.tokenizer, "user", user_text)
        self.turns.append(Turn(user_text, user_ids, answer_text, list(answer_ids)))

    def reset(self) -> None:
        self.turns = []
