"""Query helpers shared by the services: ownership checks, unique names, and filtered,
ordered pages.

They build and run peewee queries inside the caller's :func:`api.db.db_models.db_session`
(they open none), and raise :class:`common.errors.DataError` with the message the
caller gives, so each service keeps its own RAGFlow-compatible wording.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import Any, TypeVar

from peewee import Expression, ModelSelect

from api.db.db_models import BaseModel
from common.errors import DataError

RowT = TypeVar("RowT", bound=BaseModel)


def matching(model: type[BaseModel], **columns: Any) -> Expression:
    """``column == value`` for every item of ``columns``, joined with AND (in order)."""
    return reduce(operator.and_, [getattr(model, name) == value for name, value in columns.items()])


def get_or_raise(model: type[RowT], error: str, **columns: Any) -> RowT:
    """The row of ``model`` whose ``columns`` have these values.

    Typically ``id`` and its owner's column (``tenant_id``, ``kb_id``, ``dialog_id`` …),
    so that another owner's row is reported as missing.

    Raises:
        DataError: ``error``, when no row matches.
    """
    row = model.get_or_none(matching(model, **columns))
    if row is None:
        raise DataError(error)
    return row


def check_unique(model: type[BaseModel], error: str, exclude_id: str | None = None, **columns: Any) -> None:
    """Check that no row of ``model`` (other than ``exclude_id``) has these ``columns``.

    Raises:
        DataError: ``error``, when such a row exists.
    """
    query = model.select().where(matching(model, **columns))
    if exclude_id:
        query = query.where(model.id != exclude_id)
    if query.exists():
        raise DataError(error)


def where_equal(query: ModelSelect, model: type[BaseModel], **filters: Any) -> ModelSelect:
    """``query`` narrowed to ``column == value`` for each filter that is set (a filter
    that is ``None`` or empty is skipped)."""
    for name, value in filters.items():
        if value:
            query = query.where(getattr(model, name) == value)
    return query


def ordered_page(
    query: ModelSelect, model: type[BaseModel], orderby: str, desc: bool, page: int, page_size: int
) -> ModelSelect:
    """Page ``page`` (from 1) of ``page_size`` rows of ``query``, ordered by the column
    named ``orderby`` (descending when ``desc``)."""
    column = getattr(model, orderby)
    return query.order_by(column.desc() if desc else column.asc()).paginate(page, page_size)


def owned_page(
    model: type[RowT],
    owner: Expression,
    page: int,
    page_size: int,
    orderby: str,
    desc: bool,
    **filters: Any,
) -> list[RowT]:
    """One page of the rows matching ``owner`` (e.g. ``Dialog.tenant_id == tenant_id``)
    and the set ``filters`` (see :func:`where_equal`), ordered as :func:`ordered_page`."""
    query = where_equal(model.select().where(owner), model, **filters)
    return list(ordered_page(query, model, orderby, desc, page, page_size))
