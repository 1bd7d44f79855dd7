"""The one exception type for problems the user can fix (bad path, bad value, no data)."""


class UserError(Exception):
    """Bad input or configuration; the scripts print its message without a traceback."""


def exception_chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the exceptions behind it (``__cause__``, else ``__context__``), outermost first."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain
