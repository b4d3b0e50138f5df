"""Tasks by name: a network, its data and its metric, as ``aimc eval``, ``aimc reproduce``, sweeps and design spaces
run them.

Built in:

- ``"resnet9"`` — ResNet-9, top-1 accuracy on CIFAR-10 test images (:class:`~aimc.tasks.cifar.ResNet9Cifar10`);
- ``"char-lstm"`` — the char-LSTM, bits per character on character-level PTB
  (:class:`~aimc.tasks.language.CharLSTMPtb`);
- ``"char-transformer"`` — the character-level transformer on the same text (not in the chip paper;
  :class:`~aimc.tasks.language.CharTransformerPtb`).

Another network subclasses :class:`Task` and calls :func:`register_task`; every command that names a task then
accepts it.

Examples:
    >>> from aimc.tasks import available_tasks, get_task
    >>> available_tasks()
    ['resnet9', 'char-lstm', 'char-transformer']
    >>> get_task("char-lstm").metric
    'bpc'
"""

from aimc.tasks.base import (
    CALIBRATION_INPUTS,
    Task,
    TaskData,
    available_tasks,
    get_task,
    register_task,
)
from aimc.tasks.cifar import ResNet9Cifar10
from aimc.tasks.language import CharLSTMPtb, CharTransformerPtb

register_task(ResNet9Cifar10())
register_task(CharLSTMPtb())
register_task(CharTransformerPtb())

__all__ = [
    "CALIBRATION_INPUTS",
    "CharLSTMPtb",
    "CharTransformerPtb",
    "ResNet9Cifar10",
    "Task",
    "TaskData",
    "available_tasks",
    "get_task",
    "register_task",
]
