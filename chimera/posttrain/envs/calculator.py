"""A safe arithmetic evaluator for model-written expressions: parsed with ``ast`` and walked over a
whitelist of node types; never ``eval`` / ``exec``.

Allowed: integer literals, + - * / // % ** and unary + -, parentheses. ``/`` is exact (a fraction,
shown as a decimal when it does not divide). Bounds make every call finish in microseconds: the
expression's length and nesting depth, every intermediate value's size in bits, and exponents
whose result would be too large are refused before they are computed.
"""

from __future__ import annotations

import ast
from fractions import Fraction

MAX_CHARS = 256
MAX_DEPTH = 32
MAX_BITS = 512
"""Largest numerator / denominator of any intermediate value, in bits (~154 decimal digits)."""


class CalculatorError(ValueError):
    """An expression the calculator refuses; the message says why."""


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: Fraction(a // b), ast.Mod: lambda a, b: a % b}


def _bits(x: Fraction) -> int:
    return max(x.numerator.bit_length(), x.denominator.bit_length())


def _checked(x: Fraction) -> Fraction:
    if _bits(x) > MAX_BITS:
        raise CalculatorError(f"a value exceeds {MAX_BITS} bits")
    return x


def _pow(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1:
        raise CalculatorError("exponents must be integers")
    e = b.numerator
    if a == 0 and e < 0:
        raise CalculatorError("division by zero")
    if abs(a) != 1 and a != 0 and abs(e) * max(1, _bits(a)) > MAX_BITS:  # refuse before computing
        raise CalculatorError(f"the power's result would exceed {MAX_BITS} bits")
    return a ** e if e >= 0 else 1 / (a ** -e)


def _eval(node: ast.AST, depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"expression nested deeper than {MAX_DEPTH}")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int):
            raise CalculatorError(f"only integer literals are allowed, not {node.value!r}")
        return _checked(Fraction(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _eval(node.operand, depth + 1)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, depth + 1), _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _checked(_pow(a, b))
        fn = _BINOPS.get(type(node.op))
        if fn is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed (use + - * / // % **)")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and b == 0:
            raise CalculatorError("division by zero")
        return _checked(fn(a, b))
    raise CalculatorError(f"{type(node).__name__} is not allowed (integers, + - * / // % **, parentheses only)")


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression, or CalculatorError saying why not."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, not {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"the expression has {len(expression)} characters (at most {MAX_CHARS})")
    if not expression.strip():
        raise CalculatorError("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CalculatorError(f"not an arithmetic expression ({type(e).__name__})") from None
    try:
        return _eval(tree, 0)
    except RecursionError:
        raise CalculatorError(f"expression nested deeper than {MAX_DEPTH}") from None


def format_value(x: Fraction) -> str:
    """An integer as itself; a fraction as a decimal with up to 12 digits after the point."""
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    x = abs(x)
    whole, rest = divmod(x.numerator, x.denominator)
    digits = (rest * 10**12) // x.denominator
    return f"{sign}{whole}.{digits:012d}".rstrip("0").rstrip(".")
