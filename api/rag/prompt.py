"""Prompt building for the RAG chat: the knowledge block and the chat messages.

Sources:

* The knowledge block follows RAGFlow's ``kb_prompt`` (``rag/prompts/generator.py``):
  one entry per retrieved chunk, ``ID: i`` then a tree of ``Title`` and ``Content``;
  the answer cites chunk ``i`` with the ``[ID:i]`` marker.
* The messages are OpenAI chat-completion messages (``{"role", "content"}``).
* The retrieval question of a follow-up plays the part of RAGFlow's
  ``refine_multiturn`` (``prompt_config.refine_multiturn`` in ``api/db/services/
  dialog_service.py`` there), without asking a model to rewrite the question: the
  earlier user questions are put before the new one, so that "and how long does it
  last?" still finds the passage the conversation is about.
"""

from __future__ import annotations

from common.constants import MessageRole

KNOWLEDGE_PLACEHOLDER = "{knowledge}"
_HISTORY_ROLES = (MessageRole.USER.value, MessageRole.ASSISTANT.value)
#: Earlier user questions joined to a follow-up for retrieval (RAGFlow looks at 3 in all).
RETRIEVAL_EARLIER_QUESTIONS = 2


def format_knowledge(chunks: list[dict]) -> str:
    """Render retrieved chunks as RAGFlow's knowledge block.

    Args:
        chunks: dicts with at least ``content`` and ``document_name``; chunk ``i``
            (0-based, list order) is cited as ``[ID:i]``.

    Returns:
        ``"ID: i\\n├── Title: <document_name>\\n└── Content: <content>"`` entries joined
        by a blank line; ``""`` for no chunks.
    """
    entries = [
        f"ID: {index}\n├── Title: {chunk.get('document_name', '')}\n└── Content: {chunk.get('content', '')}"
        for index, chunk in enumerate(chunks)
    ]
    return "\n\n".join(entries)


def render_system_prompt(system_template: str, knowledge: str) -> str:
    """Put the knowledge block into a system prompt template.

    ``{knowledge}`` is replaced with :meth:`str.replace`, so any other braces in a
    user-written template stay as they are. A template without the placeholder gets
    the knowledge block appended after a blank line (when there is any knowledge).
    """
    if KNOWLEDGE_PLACEHOLDER in system_template:
        return system_template.replace(KNOWLEDGE_PLACEHOLDER, knowledge)
    if not knowledge:
        return system_template
    return f"{system_template}\n\nHere is the knowledge base:\n{knowledge}" if system_template else knowledge


def _history_messages(history: list[dict]) -> list[dict]:
    """Keep the user/assistant turns of ``history`` as plain ``{"role", "content"}`` dicts."""
    return [
        {"role": str(turn["role"]), "content": str(turn.get("content") or "")}
        for turn in history
        if turn.get("role") in _HISTORY_ROLES
    ]


def build_messages(system_template: str, chunks: list[dict], history: list[dict], question: str) -> list[dict]:
    """Build the OpenAI chat messages for one question.

    Args:
        system_template: the assistant's system prompt, usually with ``{knowledge}``.
        chunks: retrieved chunks (see :func:`format_knowledge`).
        history: earlier turns, oldest first, ``{"role": "user"|"assistant", "content"}``;
            other roles (e.g. ``system``) are dropped.
        question: the new user question.

    Returns:
        ``[system, *history, user]`` as ``{"role", "content"}`` dicts.
    """
    system = render_system_prompt(system_template, format_knowledge(chunks))
    return [
        {"role": MessageRole.SYSTEM.value, "content": system},
        *_history_messages(history),
        {"role": MessageRole.USER.value, "content": question},
    ]


def retrieval_question(question: str, history: list[dict], earlier: int = RETRIEVAL_EARLIER_QUESTIONS) -> str:
    """The text to retrieve with for ``question`` asked after ``history``.

    Args:
        question: the new user question.
        history: earlier turns, oldest first, ``{"role", "content"}``.
        earlier: how many of the most recent earlier user questions to include (>= 0).

    Returns:
        The earlier user questions, oldest first, then ``question``, one per line;
        just ``question`` when there is no earlier user question or ``earlier`` is 0.
    """
    asked = [str(turn.get("content") or "") for turn in history if turn.get("role") == MessageRole.USER.value]
    kept = [text for text in asked[-earlier:] if text.strip()] if earlier > 0 else []
    return "\n".join([*kept, question])
