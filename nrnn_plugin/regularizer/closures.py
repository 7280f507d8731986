"""The closure protocol of the regularizer: what a closure returns and how its outputs are walked.

``closure()`` runs the model and returns the scalar loss, or ``(output, loss_fn)`` with ``loss_fn(output)`` the
scalar loss (``output`` a tensor or a tuple/list/dict of tensors). It must only compute the loss: no
``backward()``, no ``zero_grad()``, no optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from torch import Tensor

__all__ = ["Closure", "Evaluation", "evaluate", "check_scalar", "needs_output", "map_tree", "leaves"]

Closure = Callable[[], Any]


class Evaluation(NamedTuple):
    """What one call of the closure gave: the scalar loss and, for ``(output, loss_fn)`` closures, both parts."""

    loss: Tensor
    output: Any = None
    loss_fn: Callable[[Any], Tensor] | None = None


def evaluate(closure: Closure) -> Evaluation:
    """Call ``closure()`` once: a scalar loss tensor, or ``(output, loss_fn)`` with ``loss_fn(output)`` the loss."""
    result = closure()
    if isinstance(result, Tensor):
        return Evaluation(check_scalar(result))
    if isinstance(result, (tuple, list)) and len(result) == 2 and callable(result[1]):
        output, loss_fn = result
        return Evaluation(check_scalar(loss_fn(output)), output, loss_fn)
    raise TypeError(
        "explicit_regularizer: closure() must return a scalar loss tensor or (output, loss_fn) with "
        f"loss_fn(output) the scalar loss, got {type(result).__name__}"
    )


def check_scalar(loss: Any) -> Tensor:
    """``loss`` as a 0-dim tensor; ``TypeError`` for anything but a one-element tensor."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(f"explicit_regularizer: the closure's loss must be a scalar tensor, got {shape}")
    return loss.reshape(())


def needs_output(evaluation: Evaluation) -> tuple[Any, Callable[[Any], Tensor]]:
    """``(output, loss_fn)`` of an evaluation; ``ValueError`` when the closure returned a bare loss."""
    if evaluation.loss_fn is None:
        raise ValueError(
            "explicit_regularizer: terms='R' (Gauss-Newton part) needs the outputs and the loss separately: "
            "let closure() return (output, loss_fn) with loss_fn(output) the scalar loss, got a bare loss tensor"
        )
    return evaluation.output, evaluation.loss_fn


def map_tree(fn: Callable[..., Tensor], *trees: Any) -> Any:
    """Apply ``fn`` leaf-wise to tensors nested in tuples, lists and dicts of the same structure."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(*trees)
    if isinstance(first, Mapping):
        return {key: map_tree(fn, *(t[key] for t in trees)) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(map_tree(fn, *parts) for parts in zip(*trees))
    raise TypeError(
        f"explicit_regularizer: outputs must be tensors or tuples/lists/dicts of tensors, got {type(first).__name__}"
    )


def leaves(tree: Any) -> Iterator[Tensor]:
    """The tensors nested in tuples, lists and dicts, in order."""
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, Mapping):
        for value in tree.values():
            yield from leaves(value)
    elif isinstance(tree, (tuple, list)):
        for value in tree:
            yield from leaves(value)
